"""Shadow runs: a candidate model beside the serving one on sampled frames, judged by agreement.

The pure part of issue 15's shadow deploy: which frames the candidate sees (a
budget: every n-th frame of a camera), how far it agrees with the serving model
on each (matched-box F1 at IoU 0.5 for detectors, top-1 for classifiers), the
per-camera report (frames compared, agreement, detections per frame, score JS,
latency ratio), for a camera with a second stage (a recognizer) how far what is
read in the boxes both models agree on agrees (``text_agreement``: exact-match rate
and character agreement, 1 - normalised edit distance), and the decision at the
end: promote at >= ``min_agreement`` over >= ``min_frames`` compared frames and,
where text was compared, character agreement >= ``min_text_agreement``,
otherwise discard with the reason. Bad
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
    "TextAgreement",
    "agreement",
    "box_f1",
    "character_agreement",
    "match_boxes",
    "text_agreement",
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
    min_text_agreement: float = 0.0
    """Mean character agreement, 0..1, of what the recognizer reads in the matched boxes (the serving
    recognizer on both models' boxes, or a candidate recognizer against the serving one), needed to
    promote where text was compared; 0: reported, not gated."""

    def __post_init__(self) -> None:
        for name in ("min_agreement", "min_text_agreement"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ShadowError("invalid_shadow", f"{name} must be in [0, 1], got {value}")
        if self.every_nth < 1:
            raise ShadowError("invalid_shadow", f"the shadow budget must be more than zero: every_nth >= 1, "
                                                f"got {self.every_nth}")
        if self.min_frames < 1:
            raise ShadowError("invalid_shadow", f"min_frames must be >= 1, got {self.min_frames}")


class _Boxed(Protocol):
    @property
    def box(self) -> tuple[float, float, float, float]: ...
    @property
    def label(self) -> str: ...


class _Read(Protocol):
    @property
    def text(self) -> str: ...


Readings = Sequence[str | _Read]
"""What a recognizer read, box by box: its texts, or objects with a ``text`` (agent.results.Reading)."""


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(serving: Sequence[_Boxed], candidate: Sequence[_Boxed],
                iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """The boxes both models agree on: (serving index, candidate index) pairs, matched greedily by IoU
    (highest first, same label, at least ``iou``), in the serving model's order."""
    ranked = sorted(((_iou(s.box, c.box), i, j) for i, s in enumerate(serving) for j, c in enumerate(candidate)
                     if s.label == c.label), reverse=True)
    used_s: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for overlap, i, j in ranked:
        if overlap < iou:
            break
        if i not in used_s and j not in used_c:
            used_s.add(i)
            used_c.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def box_f1(serving: Sequence[_Boxed], candidate: Sequence[_Boxed], iou: float = MATCH_IOU) -> float:
    """F1 of the candidate's boxes against the serving model's, matched greedily by IoU (same label).

    Both empty: 1.0 (they agree there is nothing). One empty: 0.0.
    """
    if not serving and not candidate:
        return 1.0
    if not serving or not candidate:
        return 0.0
    return 2.0 * len(match_boxes(serving, candidate, iou)) / (len(serving) + len(candidate))


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def character_agreement(serving: str, candidate: str) -> float:
    """1 - edit distance / the longer text's length: 1.0 the same text (both empty too), 0.0 nothing in common."""
    longest = max(len(serving), len(candidate))
    return 1.0 if longest == 0 else 1.0 - _edit_distance(serving, candidate) / longest


def _text(reading: str | _Read) -> str:
    return reading if isinstance(reading, str) else reading.text


@dataclass(frozen=True)
class TextAgreement:
    """How far two recognizers' (or one recognizer's on two models' boxes) readings agree, box by box."""

    pairs: int
    """Readings compared."""
    exact: float
    """Share of the pairs read exactly alike (1.0 when there are none)."""
    character: float
    """Mean character agreement of the pairs, 1 - normalised edit distance (1.0 when there are none)."""


def text_agreement(serving: Readings, candidate: Readings) -> TextAgreement:
    """Exact-match rate and character agreement of two sequences of readings of the same boxes, in order.

    For a detector candidate: the serving recognizer on the serving model's and on the candidate's
    matched boxes (``match_boxes``); for a recognizer candidate: the serving and the candidate
    recognizer on the same crops. Sequences of different lengths are refused (they are not the same boxes).
    """
    if len(serving) != len(candidate):
        raise ShadowError("invalid_readings", f"readings of the same boxes expected: {len(serving)} serving, "
                                              f"{len(candidate)} candidate")
    if not serving:
        return TextAgreement(0, 1.0, 1.0)
    texts = [(_text(s), _text(c)) for s, c in zip(serving, candidate, strict=True)]
    exact = sum(s == c for s, c in texts) / len(texts)
    character = sum(character_agreement(s, c) for s, c in texts) / len(texts)
    return TextAgreement(len(texts), exact, character)


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
    text_frames: int = 0
    """Frames whose readings were compared (at least one matched box read by both)."""
    text_pairs: int = 0
    text_exact: float = 0.0
    text_character: float = 0.0
    """Sums over the compared readings, of exact matches and of character agreement."""

    def text_report(self) -> dict[str, Any] | None:
        if not self.text_frames:
            return None
        return {"frames": self.text_frames, "pairs": self.text_pairs,
                "exact": round(self.text_exact / self.text_pairs, DIGITS),
                "character": round(self.text_character / self.text_pairs, DIGITS)}

    def report(self) -> dict[str, Any]:
        edges = tuple(np.linspace(0.0, 1.0, SCORE_BINS + 1)[1:-1])
        js = None
        if self.serving_scores and self.candidate_scores:
            js = round(js_distance(bin_counts(self.serving_scores, edges) + PSEUDO_COUNT,
                                   bin_counts(self.candidate_scores, edges) + PSEUDO_COUNT), DIGITS)
        frames = max(self.frames, 1)
        read_only = not self.frames and self.text_frames > 0  # a recognizer candidate's: no boxes of its own
        return {
            "frames": self.text_frames if read_only else self.frames,
            "agreement": None if read_only else round(self.agreement / frames, DIGITS),
            "detections_per_frame": round(self.candidate_detections / frames, DIGITS),
            "serving_detections_per_frame": round(self.serving_detections / frames, DIGITS),
            "detections_difference": round((self.candidate_detections - self.serving_detections) / frames, DIGITS),
            "score_js": js,
            "latency_ratio": round(self.candidate_ms / self.serving_ms, DIGITS) if self.serving_ms > 0 else None,
            "skipped": self.skipped,
            "text": self.text_report(),
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
        self.stage: str | None = None
        """The second stage the candidate is a version of (a recognizer: it reads the serving detector's
        boxes beside the serving recognizer); None: the candidate is a first stage (a detector)."""
        self._cameras: dict[str, _Camera] = {}

    @property
    def running(self) -> bool:
        return self.spec is not None

    def start(self, candidate: str, spec: ShadowSpec, serving: Serving | None = None,
              stage: str | None = None) -> None:
        """Start a run of ``candidate`` (its engine ``serving``; ``stage``: the second stage it is a
        version of, None for a first stage)."""
        with self._lock:
            if self.spec is not None:
                raise ShadowError("busy", f"a shadow run of {self.candidate} is in progress; retry when it ends")
            self.spec, self.candidate, self.serving, self.stage, self._cameras = spec, candidate, serving, stage, {}

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

    def compare_texts(self, camera: str, serving: Readings, candidate: Readings, serving_ms: float = 0.0,
                      candidate_ms: float = 0.0) -> TextAgreement:
        """Record what was read in one frame's matched boxes (``text_agreement``); returns the frame's figures.

        Called beside ``compare`` for a detector candidate on a camera with a second stage, or alone
        for a recognizer candidate (the serving and the candidate recognizer on the same crops, with
        each one's milliseconds per crop: the report's latency ratio)."""
        texts = text_agreement(serving, candidate)
        with self._lock:
            if self.spec is None or not texts.pairs:
                return texts
            entry = self._cameras.setdefault(camera, _Camera())
            entry.text_frames += 1
            entry.text_pairs += texts.pairs
            entry.text_exact += texts.exact * texts.pairs
            entry.text_character += texts.character * texts.pairs
            entry.serving_ms += serving_ms
            entry.candidate_ms += candidate_ms
        return texts

    def report(self) -> dict[str, Any]:
        """The shadow report: frames compared, agreement, text agreement, per camera and over all. A
        recognizer candidate's frames are those whose readings were compared, with no box agreement
        (it reads the serving detector's boxes: ``agreement`` None)."""
        with self._lock:
            cameras = {name: c.report() for name, c in sorted(self._cameras.items())}
            frames = sum(c.frames for c in self._cameras.values())
            read = sum(c.text_frames for c in self._cameras.values())
            total = sum(c.agreement for c in self._cameras.values())
            pairs = sum(c.text_pairs for c in self._cameras.values())
            text = None if not pairs else {
                "frames": sum(c.text_frames for c in self._cameras.values()), "pairs": pairs,
                "exact": round(sum(c.text_exact for c in self._cameras.values()) / pairs, DIGITS),
                "character": round(sum(c.text_character for c in self._cameras.values()) / pairs, DIGITS)}
        return {"candidate": self.candidate, "frames": frames or read,
                "agreement": round(total / frames, DIGITS) if frames else None, "text": text, "cameras": cameras}

    def decide(self, ended: bool = False) -> tuple[ShadowDecision, str]:
        """Where the run stands; ``ended`` (its duration is over) turns pending into discard."""
        spec = self.spec
        if spec is None:
            raise ShadowError("no_shadow", "no shadow run is in progress")
        report = self.report()
        text = report["text"]
        frames = report["frames"]  # a recognizer candidate's: the frames whose readings were compared
        if frames < spec.min_frames:
            if ended:
                return ShadowDecision.DISCARD, f"only {frames} frames compared, {spec.min_frames} needed"
            return ShadowDecision.PENDING, ""
        mean = report["agreement"]
        if mean is not None and mean < spec.min_agreement:
            return ShadowDecision.DISCARD, (f"agreement {mean:.3f} over {frames} frames is below the bound "
                                            f"{spec.min_agreement}")
        if text is not None and text["character"] < spec.min_text_agreement:
            return ShadowDecision.DISCARD, (f"text agreement {text['character']:.3f} (characters; exact "
                                            f"{text['exact']:.3f}) over {text['pairs']} boxes read is below "
                                            f"the bound {spec.min_text_agreement}")
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
            self.spec, self.candidate, self.serving, self.stage, self._cameras = None, None, None, None, {}
        return report
