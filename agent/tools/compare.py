"""Two models on the same frames: do they agree, how fast is each, how big is each.

Both run through the agent's own preprocessing and heads (``Runner``). Agreement
is the top-1 agreement for classifiers and the F1 of one-to-one box matches at an
IoU threshold for detectors and text detectors (model A is the reference), plus
the relative error of the raw outputs. Speed is measured on the same frames,
the same threads, interleaved frame by frame (A then B, then B then A) so that
machine noise hits both alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from agent.core import Progress
from agent.tools.errors import CompareError
from agent.tools.modelref import DEFAULT_THREADS, ModelRef, Runner
from agent.vision import Detection, Prediction

__all__ = [
    "DEFAULT_IOU",
    "Agreement",
    "Comparison",
    "Side",
    "Speed",
    "box_f1",
    "compare_models",
    "format_comparison",
    "match_boxes",
]

DEFAULT_IOU = 0.5
WARMUP_FRAMES = 3
"""Frames each model sees before timing starts (first runs allocate and pack weights)."""
P99 = 99.0
MS_PER_S = 1000.0

COMPARE_STAGE = "compare"
"""The stage ``progress`` is told of: frames run through both models."""


@dataclass(frozen=True)
class Speed:
    median_ms: float
    p99_ms: float
    fps: float
    """Frames per second of inference alone: frames / total inference time."""

    @classmethod
    def from_times(cls, times_ms: Sequence[float]) -> Speed:
        values = np.asarray(times_ms, dtype=np.float64)
        return cls(
            median_ms=float(np.median(values)),
            p99_ms=float(np.percentile(values, P99)),
            fps=float(len(values) * MS_PER_S / values.sum()),
        )


@dataclass(frozen=True)
class Side:
    label: str
    path: str
    size_bytes: int
    speed: Speed


@dataclass(frozen=True)
class Agreement:
    metric: Literal["top1", "box_f1"]
    value: float
    """Top-1 agreement or matched-box F1, in [0, 1]."""
    frames: int
    precision: float | None = None
    recall: float | None = None
    boxes_a: int | None = None
    boxes_b: int | None = None
    matched: int | None = None
    rel_error: float | None = None
    """||B - A|| / ||A|| over all frames' raw head outputs together (None when shapes differ)."""
    max_abs_error: float | None = None


@dataclass(frozen=True)
class Comparison:
    task: str
    frames: int
    threads: int
    iou: float
    fused: bool
    a: Side
    b: Side
    agreement: Agreement

    @property
    def speedup(self) -> float:
        """How many times faster B is than A (median inference time)."""
        return self.a.speed.median_ms / self.b.speed.median_ms

    @property
    def fps_ratio(self) -> float:
        return self.b.speed.fps / self.a.speed.fps

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speedup"] = self.speedup
        data["fps_ratio"] = self.fps_ratio
        return data


def _iou(box: tuple[float, ...], boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    iou: np.ndarray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def match_boxes(reference: Sequence[Detection], other: Sequence[Detection], iou: float) -> int:
    """How many of ``other``'s boxes match a distinct reference box of the same label at ``iou``.

    Greedy, best-scoring boxes of ``other`` first, each to the free reference box
    it overlaps most.
    """
    if not reference or not other:
        return 0
    boxes = np.asarray([d.box for d in reference], dtype=np.float64)
    labels = [d.label for d in reference]
    free = np.ones(len(reference), dtype=bool)
    matched = 0
    for det in sorted(other, key=lambda d: -d.score):
        overlaps = _iou(det.box, boxes)
        overlaps[~free] = -1.0
        overlaps[[label != det.label for label in labels]] = -1.0
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            free[best] = False
            matched += 1
    return matched


def box_f1(matched: int, boxes_a: int, boxes_b: int) -> tuple[float, float, float]:
    """(precision, recall, F1) of B against A; two empty sets agree perfectly."""
    if boxes_a == 0 and boxes_b == 0:
        return 1.0, 1.0, 1.0
    precision = matched / boxes_b if boxes_b else 0.0
    recall = matched / boxes_a if boxes_a else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class _Tally:
    """Agreement accumulated frame by frame."""

    def __init__(self, task: str, iou: float) -> None:
        self.task = task
        self.iou = iou
        self.frames = self.same_top = self.boxes_a = self.boxes_b = self.matched = 0
        self.diff_sq = self.ref_sq = 0.0
        self.max_abs = 0.0
        self.shapes_differ = False

    def add(self, out_a: np.ndarray, pred_a: Prediction, out_b: np.ndarray, pred_b: Prediction) -> None:
        self.frames += 1
        if self.task == "classify":
            self.same_top += pred_a.top_label == pred_b.top_label
        else:
            a = [d for d in pred_a.items if isinstance(d, Detection)]
            b = [d for d in pred_b.items if isinstance(d, Detection)]
            self.boxes_a += len(a)
            self.boxes_b += len(b)
            self.matched += match_boxes(a, b, self.iou)
        if out_a.shape != out_b.shape:
            self.shapes_differ = True
            return
        diff = out_b.astype(np.float64) - out_a.astype(np.float64)
        self.diff_sq += float(np.square(diff).sum())
        self.ref_sq += float(np.square(out_a.astype(np.float64)).sum())
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()))

    def result(self) -> Agreement:
        raw: dict[str, Any] = {}
        if not self.shapes_differ:
            rel = math.sqrt(self.diff_sq / self.ref_sq) if self.ref_sq > 0 else math.sqrt(self.diff_sq)
            raw = {"rel_error": rel, "max_abs_error": self.max_abs}
        if self.task == "classify":
            return Agreement("top1", self.same_top / self.frames, self.frames, **raw)
        precision, recall, f1 = box_f1(self.matched, self.boxes_a, self.boxes_b)
        return Agreement("box_f1", f1, self.frames, precision=precision, recall=recall,
                         boxes_a=self.boxes_a, boxes_b=self.boxes_b, matched=self.matched, **raw)


def compare_models(
    a: ModelRef,
    b: ModelRef,
    frames: Sequence[np.ndarray],
    *,
    threads: int = DEFAULT_THREADS,
    iou: float = DEFAULT_IOU,
    fused: bool = True,
    progress: Progress | None = None,
) -> Comparison:
    """Run ``a`` (the reference) and ``b`` on ``frames``; agreement, speed and size of each."""
    if a.manifest.task != b.manifest.task:
        raise CompareError(f"A is a {a.manifest.task} model and B a {b.manifest.task} model")
    if not frames:
        raise CompareError("no frames to compare on")
    if not 0.0 < iou <= 1.0:
        raise CompareError(f"IoU threshold {iou} is outside (0, 1]")
    runners = (Runner(a, threads=threads, fused=fused), Runner(b, threads=threads, fused=fused))
    try:
        for frame in frames[:WARMUP_FRAMES]:
            for runner in runners:
                runner.predict(frame)
        tally = _Tally(a.manifest.task, iou)
        times: tuple[list[float], list[float]] = ([], [])
        for index, frame in enumerate(frames):
            order = (0, 1) if index % 2 == 0 else (1, 0)
            results: dict[int, tuple[np.ndarray, Prediction]] = {}
            for which in order:
                output, prediction, elapsed = runners[which].predict(frame)
                times[which].append(elapsed)
                results[which] = (output, prediction)
            tally.add(*results[0], *results[1])
            if progress is not None:
                progress(COMPARE_STAGE, index + 1, len(frames))
    finally:
        for runner in runners:
            runner.close()
    sides = [
        Side(ref.label, str(ref.path), ref.size_bytes, Speed.from_times(t))
        for ref, t in zip((a, b), times, strict=True)
    ]
    return Comparison(a.manifest.task, len(frames), threads, iou, fused, sides[0], sides[1], tally.result())


def format_comparison(result: Comparison) -> str:
    """A short human-readable table."""
    agreement = result.agreement
    lines = [f"{result.task}: {result.frames} frames, {result.threads} threads, "
             f"{'fused' if result.fused else 'float'} preprocessing"]
    for tag, side in (("A", result.a), ("B", result.b)):
        s = side.speed
        lines.append(f"  {tag} {side.label}: {side.size_bytes / 1e6:.2f} MB, median {s.median_ms:.2f} ms, "
                     f"p99 {s.p99_ms:.2f} ms, {s.fps:.1f} frames/s")
    lines.append(f"  speed B/A: x{result.speedup:.2f} (median), x{result.fps_ratio:.2f} (frames/s)")
    if agreement.metric == "top1":
        lines.append(f"  top-1 agreement {agreement.value * 100:.1f}%")
    else:
        lines.append(f"  matched-box F1 {agreement.value:.3f} at IoU {result.iou} (precision "
                     f"{agreement.precision:.3f}, recall {agreement.recall:.3f}; boxes A {agreement.boxes_a}, "
                     f"B {agreement.boxes_b}, matched {agreement.matched})")
    if agreement.rel_error is not None:
        lines.append(f"  raw output: relative error {agreement.rel_error:.4f}, "
                     f"max abs error {agreement.max_abs_error:.4g}")
    else:
        lines.append("  raw output: shapes differ, no element-wise error")
    return "\n".join(lines)
