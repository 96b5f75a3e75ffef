"""Probation over time: the verdict on a swapped-in model, polled until its window decides it.

agent.models.probation's ``judge`` compares one moment's counters with the old model's;
``watch`` polls it every PROBATION_POLL_S over the probation window, with the behavioural
judgement (agent.models.behaviour's ``BehaviourProbe``, taken at the swap by ``behaviour_probe``)
joined to a passing health verdict (``with_behaviour``); a second stage (a recognizer) is
judged on what it reads instead (``ReadProbe``: boxes read empty, mean confidence, per camera,
against the old version's on the same camera). It returns the verdict that ends
probation: a failure at once, a pass once the window has passed and the verdict is final, or a
pass with a note when too few frames came in PROBATION_GIVE_UP windows (its detail says what was
missing: a camera ``input_moved`` saw too few frames like the old model's baseline). The deployment manager
(agent.models.manager) commits on a pass and swaps back on a failure.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from agent.models.behaviour import BehaviourProbe, BehaviourVerdict
from agent.models.manifest import ManifestError
from agent.models.probation import Probation, ProbationVerdict, judge
from agent.models.target import DeployTarget, Reads, ReadTally
from agent.runtime import Serving

__all__ = [
    "PROBATION_GIVE_UP",
    "PROBATION_POLL_S",
    "READ_MAX_EMPTY_RISE",
    "READ_MIN_BOXES",
    "READ_MIN_CONFIDENCE_RATIO",
    "Probe",
    "ReadProbe",
    "behaviour_probe",
    "watch",
    "with_behaviour",
]

PROBATION_POLL_S = 0.5
PROBATION_GIVE_UP = 3.0
"""Commit (with a note) when the window has passed this many times over without enough frames."""
READ_MIN_BOXES = 60
"""Boxes each version must have read on a camera before a recognizer is judged there: ten frames of
the demo's page photo (six boxes each), so that one scene's few boxes do not decide."""
READ_MAX_EMPTY_RISE = 0.6
"""The share of boxes a new recognizer reads empty may exceed the old one's by at most this. The new
version's first boxes may all be of one scene and the old one's tally spans them all: on the demo
video's scenes v6 reads 0 to 0.5 of a scene's boxes empty (and the one box of a photo with one),
v4 0 to 0.5; one that reads nothing: 1."""
READ_MIN_CONFIDENCE_RATIO = 0.25
"""A new recognizer's mean confidence per box must be at least this share of the old one's on the same
camera: a collapse, not a scene change (per scene of the demo video v6's mean is 0.25 to 0.99, v4's
0.07 to 0.96, both highest on the page; one that reads nothing: 0). A recognizer that
reads wrong with confidence (a shuffled dictionary: the same 0.95 as v4) is the shadow run's to catch."""


class Probe(Protocol):
    """What a new model outputs, judged against the old one's (``with_behaviour``)."""

    def judge(self) -> BehaviourVerdict: ...


class ReadProbe:
    """Taken at the swap of a second stage: the old version's reads per camera then, and the new one's
    from then on (``reads``, agent.results.stages)."""

    def __init__(self, reads: Reads, new_version: str, old_version: str) -> None:
        self.reads = reads
        self.new_version = new_version
        self.baseline = dict(reads(old_version))
        self.before = dict(reads(new_version))  # a version served before (deployed again) starts afresh

    def judge(self) -> BehaviourVerdict:
        """Fails on a camera where both versions read READ_MIN_BOXES boxes and the new one reads empty
        past READ_MAX_EMPTY_RISE more often, or at under READ_MIN_CONFIDENCE_RATIO of the old one's mean
        confidence; final once one camera was judged."""
        judged: dict[str, dict[str, float]] = {}
        for camera, tally in sorted(self.reads(self.new_version).items()):
            new = tally.since(self.before.get(camera, ReadTally()))
            old = self.baseline.get(camera)
            if old is None or old.boxes < READ_MIN_BOXES or new.boxes < READ_MIN_BOXES:
                continue
            judged[camera] = {"boxes": new.boxes, "empty": round(new.empty_share, 4),
                              "old_empty": round(old.empty_share, 4), "confidence": round(new.mean_confidence, 4),
                              "old_confidence": round(old.mean_confidence, 4)}
            if new.empty_share - old.empty_share > READ_MAX_EMPTY_RISE:
                return BehaviourVerdict(False, f"camera {camera}: {new.empty_share:.2f} of the boxes read empty, "
                                        f"the old version {old.empty_share:.2f} (bound +{READ_MAX_EMPTY_RISE})",
                                        True, {"reads": judged})
            if new.mean_confidence < READ_MIN_CONFIDENCE_RATIO * old.mean_confidence:
                return BehaviourVerdict(False, f"camera {camera}: mean confidence {new.mean_confidence:.2f}, the "
                                        f"old version {old.mean_confidence:.2f} (bound "
                                        f"{READ_MIN_CONFIDENCE_RATIO}x)", True, {"reads": judged})
        return BehaviourVerdict(True, "", bool(judged), {"reads": judged})


def behaviour_probe(probation: Probation, new: Serving, old: Serving | None,
                    target: DeployTarget) -> Probe | None:
    """The old model's outputs just before the swap, to judge the new one's against (with its reference);
    a second stage's reads against the old version's."""
    if probation.behaviour is None:
        return None
    if target.reads is not None:
        return None if old is None else ReadProbe(target.reads, new.version, old.version)
    if target.outputs is None:
        return None
    try:
        reference = new.manifest.monitor_data().reference
    except ManifestError:  # validated before the swap; a model without data is judged on the old one only
        reference = None
    return BehaviourProbe(target.outputs, probation.behaviour, new.version, old.version if old else None,
                          reference)


async def watch(probation: Probation, target: DeployTarget, new: Serving, baseline: dict[str, Any] | None,
                probe: Probe | None) -> ProbationVerdict:
    """The verdict that ends ``new``'s probation on ``target``, against the old model's ``baseline``."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(PROBATION_POLL_S)
        elapsed = time.monotonic() - started
        verdict = judge(probation, target.stats(new.version), baseline, final=elapsed >= probation.window_s)
        if probe is not None and verdict.ok:
            verdict = with_behaviour(verdict, probe)
        if not verdict.ok or (elapsed >= probation.window_s and verdict.final):
            return verdict
        if elapsed >= PROBATION_GIVE_UP * max(probation.window_s, PROBATION_POLL_S):
            return ProbationVerdict(ok=True, reason="", detail={**verdict.detail, "note": "too few frames to judge"})


def with_behaviour(verdict: ProbationVerdict, probe: Probe) -> ProbationVerdict:
    """A passing health verdict with the behavioural one: that failure fails probation; a pass is
    final only once there are enough frames to judge what the new model sees."""
    seen = probe.judge()
    detail = {**verdict.detail, "behaviour": seen.detail}
    if not seen.ok:
        return ProbationVerdict(False, f"behaviour: {seen.reason}", True, detail)
    return ProbationVerdict(True, "", verdict.final and seen.final, detail)
