"""Model outputs -> a Prediction in frame pixels: classify, YOLOv8 detect, DB text detect.

A head is built once from the manifest's HeadSpec (``make_head``) and called per
frame as ``head(outputs, geometry)``. It reads the output named by the spec (or
the engine's first output), checks its layout and raises TransformError naming
what does not fit, and returns a frozen Prediction whose summary fields
(``scores``, ``labels``, ``count``, ``top_label``) are what the monitors read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from agent.models import BOX_COORDS, HeadSpec
from agent.vision.preprocess import Geometry, TransformError
from agent.vision.textdet import text_boxes

__all__ = [
    "DEFAULT_TEXT_LABEL",
    "MAX_NMS_CANDIDATES",
    "Classification",
    "Detection",
    "Head",
    "Prediction",
    "make_head",
    "nms",
    "softmax",
]

MAX_NMS_CANDIDATES = 30_000
"""Boxes above the confidence threshold that enter NMS at most (the highest scores)."""
DEFAULT_TEXT_LABEL = "text"

Task = Literal["classify", "detect", "text_detect"]
Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class Classification:
    label: str
    score: float


@dataclass(frozen=True)
class Detection:
    """A box ``(x1, y1, x2, y2)`` in frame pixels; ``polygon`` for rotated text boxes."""

    box: Box
    score: float
    label: str
    polygon: tuple[Point, ...] | None = None

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        if not (x1 <= x2 and y1 <= y2):
            raise TransformError(f"a detection box needs x1 <= x2 and y1 <= y2, got {self.box}")


@dataclass(frozen=True)
class Prediction:
    """What a model said about one frame.

    ``scores``/``labels`` hold its decisions: the top-1 class of a classifier,
    every box of a detector. ``count`` is how many decisions; ``top_label`` the
    label of the best one (None when there is none).
    """

    task: Task
    items: tuple[Classification, ...] | tuple[Detection, ...]
    scores: tuple[float, ...] = field(init=False)
    labels: tuple[str, ...] = field(init=False)
    count: int = field(init=False)
    top_label: str | None = field(init=False)

    def __post_init__(self) -> None:
        decisions = self.items[:1] if self.task == "classify" else self.items
        scores = tuple(item.score for item in decisions)
        labels = tuple(item.label for item in decisions)
        best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "count", len(decisions))
        object.__setattr__(self, "top_label", None if best is None else labels[best])


class Head(Protocol):
    """Turns one frame's model outputs into a Prediction in frame pixels."""

    @property
    def spec(self) -> HeadSpec: ...

    def __call__(self, outputs: Mapping[str, np.ndarray], geometry: Geometry) -> Prediction: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs: np.ndarray = exp / np.sum(exp, axis=-1, keepdims=True)
    return probs


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    classes: np.ndarray | None = None,
    max_keep: int | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first.

    ``boxes`` are ``[N, 4]`` (x1, y1, x2, y2). With ``classes``, boxes of different
    classes never suppress each other (each class is shifted to its own region).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if classes is not None and len(boxes):
        span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        lt = np.maximum(boxes[best, :2], boxes[rest, :2])
        rb = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _output(outputs: Mapping[str, np.ndarray], spec: HeadSpec) -> np.ndarray:
    if spec.output_name is None:
        if not outputs:
            raise TransformError("the model returned no outputs")
        return np.asarray(next(iter(outputs.values())))
    if spec.output_name not in outputs:
        raise TransformError(f"output {spec.output_name!r} not in the outputs {list(outputs)}")
    return np.asarray(outputs[spec.output_name])


def _label(spec: HeadSpec, index: int) -> str:
    return spec.labels[index] if spec.labels else str(index)


@dataclass(frozen=True)
class ClassifyHead:
    """``[N, classes]`` logits (or probabilities when ``softmax`` is false) -> top-k."""

    spec: HeadSpec

    def __call__(self, outputs: Mapping[str, np.ndarray], geometry: Geometry) -> Prediction:
        out = _output(outputs, self.spec)
        if out.ndim != 2 or out.shape[0] < 1 or out.shape[1] < 1:
            raise TransformError(f"classify needs an output [N, classes], got {out.shape}")
        classes = out.shape[1]
        if self.spec.labels and classes != len(self.spec.labels):
            raise TransformError(f"classify: {classes} classes but {len(self.spec.labels)} labels")
        row = softmax(out[0]) if self.spec.softmax else out[0].astype(np.float64)
        k = min(self.spec.top_k, classes)
        top = np.argpartition(-row, k - 1)[:k] if k < classes else np.arange(classes)
        top = top[np.argsort(-row[top], kind="stable")]
        items = tuple(Classification(_label(self.spec, int(i)), float(row[i])) for i in top)
        return Prediction("classify", items)


@dataclass(frozen=True)
class YoloHead:
    """YOLOv8 ``[1, 4+C, A]`` (or ``[1, A, 4+C]``): cx, cy, w, h in input pixels, class scores.

    The orientation is the axis of size 4+len(labels) when labels are given,
    else the shorter axis (anchors outnumber classes in every YOLOv8 model).
    """

    spec: HeadSpec

    def _rows(self, out: np.ndarray) -> np.ndarray:
        """The output as ``[A, 4+C]``."""
        if out.ndim != 3 or min(out.shape[1:]) <= BOX_COORDS:
            raise TransformError(
                f"detect_yolo needs an output [1, 4+classes, anchors], got {out.shape}"
            )
        plane: np.ndarray = out[0]
        transposed: np.ndarray = plane.transpose()
        if self.spec.labels:
            width = BOX_COORDS + len(self.spec.labels)
            if plane.shape[0] == width:
                return transposed
            if plane.shape[1] == width:
                return plane
            raise TransformError(
                f"detect_yolo: {len(self.spec.labels)} labels need an axis of {width}, "
                f"got {out.shape}"
            )
        return transposed if plane.shape[0] <= plane.shape[1] else plane

    def __call__(self, outputs: Mapping[str, np.ndarray], geometry: Geometry) -> Prediction:
        rows = self._rows(_output(outputs, self.spec))
        class_scores = rows[:, BOX_COORDS:]
        classes = np.argmax(class_scores, axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        keep = np.flatnonzero(scores >= self.spec.conf_threshold)
        if len(keep) > MAX_NMS_CANDIDATES:
            keep = keep[np.argsort(-scores[keep], kind="stable")[:MAX_NMS_CANDIDATES]]
        centre, size = rows[keep, :2], rows[keep, 2:BOX_COORDS]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        chosen = nms(
            boxes, scores[keep], self.spec.iou_threshold, classes[keep], self.spec.max_detections
        )
        frame_boxes = geometry.boxes_to_frame(boxes[chosen])
        items = tuple(
            Detection(
                (float(x1), float(y1), float(x2), float(y2)),
                float(scores[keep[i]]),
                _label(self.spec, int(classes[keep[i]])),
            )
            for (x1, y1, x2, y2), i in zip(frame_boxes, chosen, strict=True)
        )
        return Prediction("detect", items)


@dataclass(frozen=True)
class TextDetectHead:
    """A DB probability map ``[1, 1, H, W]`` -> rotated text boxes (see ``textdet``)."""

    spec: HeadSpec

    def __call__(self, outputs: Mapping[str, np.ndarray], geometry: Geometry) -> Prediction:
        out = _output(outputs, self.spec)
        if out.ndim != 4 or out.shape[:2] != (1, 1) or min(out.shape[2:]) < 1:
            raise TransformError(f"text_detect_db needs a map [1, 1, H, W], got {out.shape}")
        prob = out[0, 0]
        found = text_boxes(prob, self.spec)
        label = self.spec.labels[0] if self.spec.labels else DEFAULT_TEXT_LABEL
        map_scale = np.array(
            [geometry.input_width / prob.shape[1], geometry.input_height / prob.shape[0]]
        )
        items = []
        for quad, score in found:
            polygon = geometry.polygon_to_frame(quad * map_scale)
            x1, y1 = polygon.min(axis=0)
            x2, y2 = polygon.max(axis=0)
            points = tuple((float(x), float(y)) for x, y in polygon)
            box = (float(x1), float(y1), float(x2), float(y2))
            items.append(Detection(box, score, label, points))
        return Prediction("text_detect", tuple(items))


def make_head(spec: HeadSpec) -> Head:
    """The head for ``spec.kind``."""
    if spec.kind == "classify":
        return ClassifyHead(spec)
    if spec.kind == "detect_yolo":
        return YoloHead(spec)
    if spec.kind == "ctc":
        raise TransformError("a ctc head reads crops of a first stage's boxes (agent.results.SecondStage), not frames")
    return TextDetectHead(spec)
