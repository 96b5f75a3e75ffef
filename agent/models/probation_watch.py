"""Probation over time: the verdict on a swapped-in model, polled until its window decides it.

agent.models.probation's ``judge`` compares one moment's counters with the old model's;
``watch`` polls it every PROBATION_POLL_S over the probation window, with the behavioural
judgement (agent.models.behaviour's ``BehaviourProbe``, taken at the swap by ``behaviour_probe``)
joined to a passing health verdict (``with_behaviour``). It returns the verdict that ends
probation: a failure at once, a pass once the window has passed and the verdict is final, or a
pass with a note when too few frames came in PROBATION_GIVE_UP windows. The deployment manager
(agent.models.manager) commits on a pass and swaps back on a failure.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.models.behaviour import BehaviourProbe
from agent.models.manifest import ManifestError
from agent.models.probation import Probation, ProbationVerdict, judge
from agent.models.target import DeployTarget
from agent.runtime import Serving

__all__ = ["PROBATION_GIVE_UP", "PROBATION_POLL_S", "behaviour_probe", "watch", "with_behaviour"]

PROBATION_POLL_S = 0.5
PROBATION_GIVE_UP = 3.0
"""Commit (with a note) when the window has passed this many times over without enough frames."""


def behaviour_probe(probation: Probation, new: Serving, old: Serving | None,
                    target: DeployTarget) -> BehaviourProbe | None:
    """The old model's outputs just before the swap, to judge the new one's against (with its reference)."""
    if target.outputs is None or probation.behaviour is None:
        return None
    try:
        reference = new.manifest.monitor_data().reference
    except ManifestError:  # validated before the swap; a model without data is judged on the old one only
        reference = None
    return BehaviourProbe(target.outputs, probation.behaviour, new.version, old.version if old else None,
                          reference)


async def watch(probation: Probation, target: DeployTarget, new: Serving, baseline: dict[str, Any] | None,
                probe: BehaviourProbe | None) -> ProbationVerdict:
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
            return ProbationVerdict(ok=True, reason="", detail={"note": "too few frames to judge"})


def with_behaviour(verdict: ProbationVerdict, probe: BehaviourProbe) -> ProbationVerdict:
    """A passing health verdict with the behavioural one: that failure fails probation; a pass is
    final only once there are enough frames to judge what the new model sees."""
    seen = probe.judge()
    detail = {**verdict.detail, "behaviour": seen.detail}
    if not seen.ok:
        return ProbationVerdict(False, f"behaviour: {seen.reason}", True, detail)
    return ProbationVerdict(True, "", verdict.final and seen.final, detail)
