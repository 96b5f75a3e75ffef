"""Shadow runs: a candidate model beside the serving one on sampled frames, judged by agreement.

The pure part of issue 15's shadow deploy: which frames the candidate sees (a
budget: every n-th frame of a camera), how far it agrees with the serving model
on each (matched-box F1 at IoU 0.5 for detectors, top-1 for classifiers), the
per-camera report (frames compared, agreement, detections per frame, score JS,
latency ratio), and the decision at the end: promote at >= ``min_agreement``
over >= ``min_frames`` compared frames, otherwise discard with the reason. Bad
requests (a shadow while one runs, a promote with none pending, a min-agreement
outside [0, 1], a zero budget) are ``ShadowError`` with a code, and change nothing.

The deployment manager starts and ends a run; the frame worker's shadow observer
(agent.vision.shadow) hands sampled frames to the candidate off the frame worker
and records them here (docs/deployment.md, "Shadow deploy").
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.core import CodedError
from agent.monitor import FrameSummary, bin_counts, js_distance
from agent.runtime import Serving

__all__ = [
    "MATCH_IOU",
    "ShadowDecision",
    "ShadowError",
    "ShadowGate",
    "ShadowSpec",
    "agreement",
    "box_f1",
]

MATCH_IOU = 0.5
"""Two boxes are the same object at IoU >= 0.5: the usual detection matching bound (PASCAL VOC)."""
SCORE_BINS = 10
PSEUDO_COUNT = 0.5
"""Per bin before the score JS distance, as the drift monitor and behavioural probation add."""
DIGITS = 4


class ShadowError(CodedError):
    """A shadow request that cannot be honoured; nothing was changed."""


@dataclass(frozen=True)
class ShadowSpec:
    """One shadow run's terms: how many frames, how much agreement, what share of frames."""

    min_agreement: float
    """Mean per-frame agreement, 0..1, at which the candidate is promoted."""
    min_frames: int
    """Compared frames (over all cameras) the decision needs."""
    every_nth: int
    """The budget: the candidate sees every n-th frame of each camera (1: every frame)."""
    auto_promote: bool = True
    """Promote as soon as the bound is met; False: wait for a ``promote`` command."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_agreement) and 0.0 <= self.min_agreement <= 1.0):
            raise ShadowError("invalid_shadow", f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if self.every_nth < 1:
            raise ShadowError("invalid_shadow", f"the shadow budget must be more than zero: every_nth >= 1, "
                                                f"got {self.every_nth}")
        if self.min_frames < 1:
            raise ShadowError("invalid_shadow", f"min_frames must be >= 1, got {self.min_frames}")


class _Boxed(Protocol):
    box: tuple[float, float, float, float]
    label: str


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_f1(serving: Sequence[_Boxed], candidate: Sequence[_Boxed], iou: float = MATCH_IOU) -> float:
    """F1 of the candidate's boxes against the serving model's, matched greedily by IoU (same label).

    Both empty: 1.0 (they agree there is nothing). One empty: 0.0.
    """
    if not serving and not candidate:
        return 1.0
    if not serving or not candidate:
        return 0.0
    pairs = sorted(((_iou(s.box, c.box), i, j) for i, s in enumerate(serving) for j, c in enumerate(candidate)
                    if s.label == c.label), reverse=True)
    used_s: set[int] = set()
    used_c: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < iou:
            break
        if i not in used_s and j not in used_c:
            used_s.add(i)
            used_c.add(j)
    matched = len(used_s)
    return 2.0 * matched / (len(serving) + len(candidate))


def agreement(serving: FrameSummary, candidate: FrameSummary) -> float:
    """One frame's agreement: box F1 for detectors, top-1 equality for classifiers; a failed frame 0."""
    if serving.task is None or candidate.task is None:
        return 0.0
    if serving.task == "classify":
        return 1.0 if serving.top_label == candidate.top_label else 0.0
    return box_f1(serving.items, candidate.items)


class ShadowDecision(str, enum.Enum):
    PENDING = "pending"
    """Fewer compared frames than the spec needs."""
    READY = "ready"
    """The bound is met; waiting for a ``promote`` command."""
    PROMOTE = "promote"
    DISCARD = "discard"


@dataclass
class _Camera:
    frames: int = 0
    agreement: float = 0.0
    serving_detections: int = 0
    candidate_detections: int = 0
    serving_scores: list[float] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)
    serving_ms: float = 0.0
    candidate_ms: float = 0.0
    skipped: int = 0
    """Sampled frames the candidate did not see: it was still busy with an earlier one."""

    def report(self) -> dict[str, Any]:
        edges = tuple(np.linspace(0.0, 1.0, SCORE_BINS + 1)[1:-1])
        js = None
        if self.serving_scores and self.candidate_scores:
            js = round(js_distance(bin_counts(self.serving_scores, edges) + PSEUDO_COUNT,
                                   bin_counts(self.candidate_scores, edges) + PSEUDO_COUNT), DIGITS)
        frames = max(self.frames, 1)
        return {
            "frames": self.frames,
            "agreement": round(self.agreement / frames, DIGITS),
            "detections_per_frame": round(self.candidate_detections / frames, DIGITS),
            "serving_detections_per_frame": round(self.serving_detections / frames, DIGITS),
            "detections_difference": round((self.candidate_detections - self.serving_detections) / frames, DIGITS),
            "score_js": js,
            "latency_ratio": round(self.candidate_ms / self.serving_ms, DIGITS) if self.serving_ms > 0 else None,
            "skipped": self.skipped,
        }


class ShadowGate:
    """At most one shadow run at a time: its sampling, its comparisons and its decision.

    ``compare`` runs on the frame worker; everything else on the event loop; one lock between them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spec: ShadowSpec | None = None
        self.candidate: str | None = None
        self.serving: Serving | None = None
        """The candidate's loaded engine, when the run is live (the shadow observer infers with it)."""
        self._cameras: dict[str, _Camera] = {}

    @property
    def running(self) -> bool:
        return self.spec is not None

    def start(self, candidate: str, spec: ShadowSpec, serving: Serving | None = None) -> None:
        with self._lock:
            if self.spec is not None:
                raise ShadowError("busy", f"a shadow run of {self.candidate} is in progress; retry when it ends")
            self.spec, self.candidate, self.serving, self._cameras = spec, candidate, serving, {}

    def skip(self, camera: str) -> None:
        """A sampled frame of ``camera`` the candidate could not take (busy): counted in the report."""
        with self._lock:
            if self.spec is not None:
                self._cameras.setdefault(camera, _Camera()).skipped += 1

    def wants(self, index: int) -> bool:
        """Whether the candidate sees frame ``index`` of a camera (the budget)."""
        spec = self.spec
        return spec is not None and index % spec.every_nth == 0

    def compare(self, serving: FrameSummary, candidate: FrameSummary, serving_ms: float,
                candidate_ms: float) -> float:
        """Record one sampled frame seen by both models; returns its agreement."""
        score = agreement(serving, candidate)
        with self._lock:
            if self.spec is None:
                return score
            camera = self._cameras.setdefault(serving.source, _Camera())
            camera.frames += 1
            camera.agreement += score
            camera.serving_detections += serving.count
            camera.candidate_detections += candidate.count
            camera.serving_scores.extend(serving.scores)
            camera.candidate_scores.extend(candidate.scores)
            camera.serving_ms += serving_ms
            camera.candidate_ms += candidate_ms
        return score

    def report(self) -> dict[str, Any]:
        """The shadow report: frames compared, agreement, per camera and over all."""
        with self._lock:
            cameras = {name: c.report() for name, c in sorted(self._cameras.items())}
            frames = sum(c.frames for c in self._cameras.values())
            total = sum(c.agreement for c in self._cameras.values())
        return {"candidate": self.candidate, "frames": frames,
                "agreement": round(total / frames, DIGITS) if frames else None, "cameras": cameras}

    def decide(self, ended: bool = False) -> tuple[ShadowDecision, str]:
        """Where the run stands; ``ended`` (its duration is over) turns pending into discard."""
        spec = self.spec
        if spec is None:
            raise ShadowError("no_shadow", "no shadow run is in progress")
        report = self.report()
        frames, mean = report["frames"], report["agreement"]
        if frames < spec.min_frames:
            if ended:
                return ShadowDecision.DISCARD, f"only {frames} frames compared, {spec.min_frames} needed"
            return ShadowDecision.PENDING, ""
        if mean < spec.min_agreement:
            return ShadowDecision.DISCARD, (f"agreement {mean:.3f} over {frames} frames is below the bound "
                                            f"{spec.min_agreement}")
        if spec.auto_promote:
            return ShadowDecision.PROMOTE, ""
        return ShadowDecision.READY, ""

    def promote(self) -> dict[str, Any]:
        """A ``promote`` command: the run must be waiting with its bound met; ends it and returns its report."""
        decision, reason = self.decide()
        if decision is not ShadowDecision.READY:
            raise ShadowError("not_ready", f"the shadow run cannot be promoted: {decision.value}"
                              + (f" ({reason})" if reason else ""))
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """End the run (promoted or discarded) and return its report."""
        if self.spec is None:
            raise ShadowError("no_shadow", "no shadow run is in progress")
        report = self.report()
        with self._lock:
            self.spec, self.candidate, self.serving, self._cameras = None, None, None, {}
        return report
