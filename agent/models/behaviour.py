"""Behavioural probation: does the new model see what the old one saw, and what its reference says?

After a swap, probation also judges the new model's outputs from the FrameSummary
stream, two ways:

* against the old model on the same cameras just before the swap, per camera, on
  the frames whose input looked alike (agent.models.behaviour_match: a scene change
  at the swap is not a regression; a camera with too few look-alike frames waits,
  ``input_moved``): detections per frame (the ratio of the means), the score
  distribution and the label mix (Jensen-Shannon distances);
* against the bundle's reference output statistics (``count`` and ``confidence``,
  or ``classes`` and ``confidence``), pooled over the cameras, with the drift
  monitor's arithmetic (PSI and the JS distance on the reference's bins).

A model that detects nothing, or everything, where the old one saw text fails
with a reason naming the metric, its value and the bound. ``OutputWindow`` is the
frame worker's side (one small row per frame under a lock); ``BehaviourProbe`` is
taken at the swap and judged by the deployment manager; ``judge_behaviour`` is the
pure arithmetic.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import structlog

from agent.models.behaviour_match import match_inputs
from agent.monitor import (
    PSI_EPSILON,
    Categories,
    Distribution,
    FrameSummary,
    Reference,
    bin_counts,
    js_distance,
    output_metrics,
    psi,
)

__all__ = [
    "INPUT_MOVED",
    "BehaviourBounds",
    "BehaviourProbe",
    "BehaviourVerdict",
    "OutputRow",
    "OutputWindow",
    "judge_behaviour",
    "rows_of",
]

log = structlog.get_logger(__name__)

SCORE_BINS = 10
"""Equal-width score bins over [0, 1], as the reference's confidence histograms use."""
PSEUDO_COUNT = 0.5
"""Added to every bin of both histograms before comparing, as the drift monitor does, so that a bin
a short window happens to miss counts as unlikely rather than impossible."""
DIGITS = 4
OTHER_LABEL = "\x00other"
"""The label bin for what the reference's class list does not name."""
INPUT_MOVED = "input_moved"
"""A camera's state while too few of the new model's frames look like the old model's baseline frames."""


@dataclass(frozen=True)
class BehaviourBounds:
    """How far the new model's outputs may move from the old model's and from its reference.

    The defaults (``[deploy] behaviour_*``, documented there) are loose on purpose:
    they pass a normal model update (the demo detector v4 -> v6) and fail a model
    that sees nothing or everything.
    """

    min_frames: int
    """Frames a camera needs, from the new model and from the old one, before it is judged."""
    baseline_frames: int
    """The old model's last frames per camera that make its baseline."""
    min_baseline_count: float
    """The old model's mean detections per frame at which it 'saw something' on a camera."""
    min_count_ratio: float
    """New / old mean detections per frame below this fails (the new model sees almost nothing)."""
    max_count_ratio: float
    """New / old mean detections per frame above this fails (the new model sees everything)."""
    max_score_js: float
    """JS distance (base 2) between the new and old score distributions on a camera."""
    max_label_js: float
    """JS distance between the new and old label mix on a camera."""
    max_reference_psi: float
    """PSI of an output metric against the bundle's reference."""
    max_reference_js: float
    """JS distance of an output metric against the bundle's reference."""
    match_brightness: float
    """Mean luma levels two frames may differ by and still show the same scene (agent.models.behaviour_match)."""
    match_contrast: float
    """Luma standard deviation levels two frames may differ by and still show the same scene."""
    match_sharpness: float
    """The ratio two frames' sharpness may differ by and still show the same scene."""

    @classmethod
    def from_settings(cls, section: Any, **overrides: float | None) -> BehaviourBounds:
        """The ``[deploy] behaviour_*`` bounds, with a deploy's own (those not None) over them."""
        values = {name: getattr(section, f"behaviour_{name}") for name in cls.__dataclass_fields__}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if self.min_frames < 1 or self.baseline_frames < self.min_frames:
            raise ValueError(f"min_frames must be >= 1 and baseline_frames >= min_frames, got "
                             f"{self.min_frames}, {self.baseline_frames}")
        for name in ("min_baseline_count", "min_count_ratio", "max_count_ratio", "max_reference_psi",
                     "match_brightness", "match_contrast"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if not (math.isfinite(self.match_sharpness) and self.match_sharpness > 1):
            raise ValueError(f"match_sharpness must be a ratio > 1, got {self.match_sharpness}")
        if self.min_count_ratio >= self.max_count_ratio:
            raise ValueError(f"min_count_ratio {self.min_count_ratio} must be below "
                             f"max_count_ratio {self.max_count_ratio}")
        for name in ("max_score_js", "max_label_js", "max_reference_js"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")


class OutputRow(NamedTuple):
    """What behavioural probation keeps of one frame's prediction."""

    seq: int
    camera: str
    version: str
    task: str | None
    """None: the frame failed (error or non-finite output); it counts as no output at all."""
    detections: int
    scores: tuple[float, ...]
    labels: tuple[str, ...]
    inputs: tuple[float, float, float]
    """The frame's input statistics (brightness, contrast, sharpness: agent.monitor's ``InputStats``)."""


def rows_of(summaries: Iterable[FrameSummary], start: int = 0) -> list[OutputRow]:
    """Rows from summaries, numbered from ``start`` (tests and offline tools)."""
    return [_row(seq, s) for seq, s in enumerate(summaries, start)]


def _row(seq: int, summary: FrameSummary) -> OutputRow:
    labels: tuple[str, ...]
    if summary.task == "classify":
        scores, labels = summary.scores[:1], (summary.top_label,) if summary.top_label is not None else ()
    else:
        scores, labels = summary.scores, summary.labels
    return OutputRow(seq, summary.source, summary.version, summary.task, summary.count, scores, labels,
                     summary.inputs)


class OutputWindow:
    """The frame worker's side: the last ``size`` frames' outputs, every model version mixed.

    A SummaryObserver (``wants`` / ``observe``) for ``Monitors``. Rows carry a
    sequence number so that a probe taken at a swap reads only what came after it.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._rows: deque[OutputRow] = deque(maxlen=size)
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def wants(self, index: int) -> bool:
        return True

    def observe(self, summary: FrameSummary) -> None:
        with self._lock:
            self._rows.append(_row(next(self._seq), summary))

    def rows(self, version: str, after: int = -1) -> list[OutputRow]:
        with self._lock:
            return [r for r in self._rows if r.version == version and r.seq > after]

    def last_seq(self) -> int:
        with self._lock:
            return self._rows[-1].seq if self._rows else -1


@dataclass(frozen=True)
class BehaviourVerdict:
    ok: bool
    reason: str
    final: bool
    """Enough frames were seen to decide."""
    detail: dict[str, Any] = field(default_factory=dict)


def _last_per_camera(rows: Sequence[OutputRow], keep: int) -> dict[str, list[OutputRow]]:
    by_camera: dict[str, list[OutputRow]] = {}
    for row in rows:
        by_camera.setdefault(row.camera, []).append(row)
    return {camera: kept[-keep:] for camera, kept in by_camera.items()}


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def _score_hist(rows: Sequence[OutputRow], weights: Sequence[float]) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)[1:-1]
    counts = np.zeros(SCORE_BINS, dtype=np.float64)
    for row, weight in zip(rows, weights, strict=True):
        if row.scores:
            counts += weight * bin_counts(row.scores, tuple(edges))
    return counts


def _label_hist(rows: Sequence[OutputRow], weights: Sequence[float], labels: Sequence[str]) -> np.ndarray:
    position = {label: i for i, label in enumerate(labels)}
    counts = np.zeros(len(labels), dtype=np.float64)
    for row, weight in zip(rows, weights, strict=True):
        for label in row.labels:
            counts[position[label]] += weight
    return counts


def _js(a: np.ndarray, b: np.ndarray) -> float:
    return js_distance(a + PSEUDO_COUNT, b + PSEUDO_COUNT)


def _camera(bounds: BehaviourBounds, camera: str, new: list[OutputRow], old: list[OutputRow],
            weights: Sequence[float]) -> tuple[dict[str, Any], str | None]:
    """The comparison on one camera of the new model's frames with the old model's look-alikes (each old
    frame ``weights`` times), and the reason it fails (None: within every bound)."""
    ones = [1.0] * len(new)
    new_mean = sum(r.detections for r in new) / len(new)
    old_mean = sum(w * r.detections for r, w in zip(old, weights, strict=True)) / sum(weights)
    ratio = new_mean / max(old_mean, bounds.min_baseline_count)
    entry: dict[str, Any] = {"frames": len(new), "old_frames": int(np.count_nonzero(weights)),
                             "detections_per_frame": _round(new_mean),
                             "old_detections_per_frame": _round(old_mean), "count_ratio": _round(ratio),
                             "score_js": None, "label_js": None}
    where = f"camera {camera!r}: detections per frame {new_mean:.2f} against the old model's {old_mean:.2f}"
    if old_mean >= bounds.min_baseline_count and ratio < bounds.min_count_ratio:
        return entry, f"{where} (ratio {ratio:.3f}, bound >= {bounds.min_count_ratio})"
    if ratio > bounds.max_count_ratio:
        return entry, f"{where} (ratio {ratio:.3f}, bound <= {bounds.max_count_ratio})"
    new_scores = sum(len(r.scores) for r in new)
    old_scores = sum(w * len(r.scores) for r, w in zip(old, weights, strict=True))
    if new_scores >= bounds.min_frames and old_scores >= bounds.min_frames:
        js = entry["score_js"] = _round(_js(_score_hist(new, ones), _score_hist(old, weights)))
        if js > bounds.max_score_js:
            return entry, (f"camera {camera!r}: score distribution JS distance {js:.3f} from the old model's "
                           f"(bound {bounds.max_score_js})")
    labels = sorted({label for r in (*new, *old) for label in r.labels})
    if labels and new_scores and old_scores:
        js = entry["label_js"] = _round(_js(_label_hist(new, ones, labels), _label_hist(old, weights, labels)))
        if js > bounds.max_label_js:
            return entry, (f"camera {camera!r}: label mix JS distance {js:.3f} from the old model's "
                           f"(bound {bounds.max_label_js})")
    return entry, None


def _reference_histograms(expected: Distribution | Categories, metric: str,
                          rows: Sequence[OutputRow]) -> tuple[np.ndarray, np.ndarray]:
    """Reference and live counts on the reference's bins, as the drift monitor builds them."""
    if isinstance(expected, Distribution):
        values = ([float(r.detections) for r in rows] if metric == "count"
                  else [s for r in rows for s in r.scores])
        live = bin_counts(values, expected.edges).astype(np.float64)
        return np.asarray(expected.counts, dtype=np.float64), live
    position = {label: i for i, label in enumerate(expected.labels)}
    live = np.zeros(len(expected.labels) + 1, dtype=np.float64)
    for row in rows:
        for label in row.labels:
            live[position.get(label, len(expected.labels))] += 1
    return np.asarray((*expected.counts, 0), dtype=np.float64), live


def _against_reference(bounds: BehaviourBounds, reference: Reference,
                       rows: Sequence[OutputRow]) -> tuple[dict[str, Any], str | None]:
    entry: dict[str, Any] = {}
    for metric in output_metrics(reference.task):
        expected = reference.distribution(metric)
        if expected is None:
            continue
        ref_counts, live_counts = _reference_histograms(expected, metric, rows)
        ref_counts, live_counts = ref_counts + PSEUDO_COUNT, live_counts + PSEUDO_COUNT
        measured = {"psi": _round(psi(ref_counts, live_counts, PSI_EPSILON)),
                    "js": _round(js_distance(ref_counts, live_counts))}
        entry[metric] = measured
        for measure, bound in (("psi", bounds.max_reference_psi), ("js", bounds.max_reference_js)):
            if measured[measure] > bound:
                name = "detections per frame" if metric == "count" else metric
                return entry, (f"{name} {measure.upper()} {measured[measure]:.3f} against the bundle's reference "
                               f"(bound {bound})")
    return entry, None


def judge_behaviour(bounds: BehaviourBounds, new: Sequence[OutputRow], old: Sequence[OutputRow],
                    reference: Reference | None) -> BehaviourVerdict:
    """Judge the new model's rows (since the swap) against the old model's and the reference.

    ``final`` is false while no camera has enough frames from both models (or,
    with no baseline, while the new model has fewer than ``min_frames`` in all).
    On a camera, only the new frames with look-alike old ones count, against
    those (``match_inputs``); one with fewer than ``min_frames`` of either is
    ``input_moved`` and waits. The reference is judged once the new model has
    ``min_frames``, whether or not a camera could be compared yet. A failed frame
    (``task`` None) counts as a frame with no detection.
    """
    by_camera_new = _last_per_camera(new, len(new) or 1)
    by_camera_old = _last_per_camera(old, bounds.baseline_frames)
    cameras: dict[str, Any] = {}
    judged = 0
    for camera, rows in sorted(by_camera_new.items()):
        baseline = by_camera_old.get(camera, [])
        if len(rows) < bounds.min_frames or len(baseline) < bounds.min_frames:
            cameras[camera] = {"frames": len(rows), "old_frames": len(baseline), "state": "insufficient_frames"}
            continue
        matched = match_inputs(bounds, rows, baseline)
        if len(matched.new) < bounds.min_frames or matched.old_frames < bounds.min_frames:
            cameras[camera] = {"frames": len(rows), "old_frames": len(baseline), "matched_frames": len(matched.new),
                               "matched_old_frames": matched.old_frames, "state": INPUT_MOVED}
            continue
        judged += 1
        entry, reason = _camera(bounds, camera, [rows[i] for i in matched.new], baseline, matched.weights.tolist())
        entry["unmatched_frames"] = len(rows) - len(matched.new)
        cameras[camera] = entry
        if reason is not None:
            return BehaviourVerdict(False, reason, True, {"cameras": cameras})
    comparable = any(len(b) >= bounds.min_frames for b in by_camera_old.values())
    enough = judged > 0 if comparable else len(new) >= bounds.min_frames
    detail: dict[str, Any] = {"cameras": cameras, "reference": None}
    # The reference does not depend on the old model's scenes: it is judged once the new model has
    # min_frames, also while its cameras wait for frames like the old model's (input_moved).
    if reference is not None and len(new) >= bounds.min_frames:
        detail["reference"], reason = _against_reference(bounds, reference, new)
        if reason is not None:
            return BehaviourVerdict(False, reason, True, detail)
    return BehaviourVerdict(True, "", enough, detail)


class BehaviourProbe:
    """Taken at a swap: the old model's baseline then, and the new model's rows from then on."""

    def __init__(self, window: OutputWindow, bounds: BehaviourBounds, new_version: str,
                 old_version: str | None, reference: Reference | None) -> None:
        self.window = window
        self.bounds = bounds
        self.new_version = new_version
        self.reference = reference
        self.baseline = window.rows(old_version) if old_version is not None else []
        self.after = window.last_seq()
        self._moved: set[str] = set()

    def judge(self) -> BehaviourVerdict:
        """The verdict so far; logs ``behaviour_input_moved`` once for each camera that waits for frames like
        the old model's."""
        verdict = judge_behaviour(self.bounds, self.window.rows(self.new_version, self.after), self.baseline,
                                  self.reference)
        for camera, entry in verdict.detail.get("cameras", {}).items():
            if entry.get("state") == INPUT_MOVED and camera not in self._moved:
                self._moved.add(camera)
                log.info("behaviour_input_moved", version=self.new_version, camera=camera,
                         frames=entry["frames"], matched_frames=entry["matched_frames"],
                         reason="the camera's frames since the swap do not look like the old model's baseline "
                                "frames: judged once enough of them do")
        return verdict
