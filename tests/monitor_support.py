"""Real frames and real model outputs for the monitor tests.

Frames come from the demo video through cv2.VideoCapture; predictions from the
demo models through ONNX Runtime. The preprocessing and heads here are minimal
stand-ins for agent.vision.transforms (Preprocessor, make_head, Prediction) and
``FrameResult`` stands in for agent.vision.pipeline.FrameResult, with the same
fields: once those modules are on the branch, ``Predictor`` becomes
``Pipeline.process`` and these classes their imports.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from agent.vision.sources import Frame

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
VIDEO = DEMO / "video.mp4"
TEXT_DET = DEMO / "models" / "text-det-v4"
ORIENTATION = DEMO / "models" / "orientation-0.0.11"
SCENE_FRAMES = 45
"""The demo video shows each photo for 45 frames: text, page, astronaut, coffee, chelsea, rocket."""
DB_BIN_THRESHOLD = 0.3
DB_BOX_THRESHOLD = 0.5
DB_MIN_AREA = 9
ORIENTATION_LABELS = ("0", "90", "180", "270")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Classification:
    label: str
    score: float


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]
    score: float
    label: str
    polygon: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class Prediction:
    task: str
    items: tuple
    scores: tuple[float, ...] = field(init=False)
    labels: tuple[str, ...] = field(init=False)
    count: int = field(init=False)
    top_label: str | None = field(init=False)

    def __post_init__(self) -> None:
        decisions = self.items[:1] if self.task == "classify" else self.items
        scores = tuple(i.score for i in decisions)
        labels = tuple(i.label for i in decisions)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "count", len(decisions))
        object.__setattr__(self, "top_label",
                           labels[int(np.argmax(scores))] if scores else None)


@dataclass(frozen=True)
class FrameResult:
    frame: Frame
    model: str
    version: str
    timings_ms: dict[str, float]
    prediction: Prediction | None
    finite: bool
    error: str | None = None


class Predictor:
    """A demo model in ONNX Runtime with its preprocessing and head: image -> Prediction."""

    def __init__(self, folder: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.classify = folder.name.startswith("orientation")

    def __call__(self, image: np.ndarray) -> Prediction:
        if self.classify:
            return self._orientation(image)
        return self._text(image)

    def _text(self, image: np.ndarray) -> Prediction:
        h, w = image.shape[:2]
        rh, rw = max(32, h // 32 * 32), max(32, w // 32 * 32)
        resized = cv2.resize(image, (rw, rh)) if (rh, rw) != (h, w) else image
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        tensor = ((rgb - 0.5) / 0.5).transpose(2, 0, 1)[None]
        prob = self.session.run(None, {self.input: tensor})[0][0, 0]
        mask = (prob > DB_BIN_THRESHOLD).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        sx, sy = w / prob.shape[1], h / prob.shape[0]
        items = []
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            if area < DB_MIN_AREA:
                continue
            score = float(prob[labels == i].mean())
            if score >= DB_BOX_THRESHOLD:
                box = (x * sx, y * sy, (x + bw) * sx, (y + bh) * sy)
                items.append(Detection(tuple(float(v) for v in box), score, "text"))
        items.sort(key=lambda d: -d.score)
        return Prediction("text_detect", tuple(items))

    def _orientation(self, image: np.ndarray) -> Prediction:
        logits = self.session.run(None, {self.input: orientation_tensor(image)})[0][0]
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        order = np.argsort(-probs)
        items = tuple(Classification(ORIENTATION_LABELS[i], float(probs[i])) for i in order)
        return Prediction("classify", items)


def orientation_tensor(image: np.ndarray) -> np.ndarray:
    """The orientation classifier's input: short side 256, centre crop 224, ImageNet mean/std."""
    h, w = image.shape[:2]
    scale = 256 / min(h, w)
    resized = cv2.resize(image, (round(w * scale), round(h * scale)))
    y0 = (resized.shape[0] - 224) // 2
    x0 = (resized.shape[1] - 224) // 2
    crop = resized[y0:y0 + 224, x0:x0 + 224]
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)


class CachedPredictor:
    """A Predictor that remembers its answer per image content, so tests share model runs."""

    def __init__(self, folder: Path) -> None:
        self.predict = Predictor(folder)
        self.task = "classify" if self.predict.classify else "text_detect"
        self._memo: dict[bytes, Prediction] = {}

    def __call__(self, image: np.ndarray) -> Prediction:
        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest() + str(image.shape).encode()
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self.predict(image)
        return found


@functools.cache
def cached_predictor(folder: Path) -> CachedPredictor:
    return CachedPredictor(folder)


@functools.cache
def video() -> tuple[np.ndarray, ...]:
    capture = cv2.VideoCapture(str(VIDEO))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    assert frames, f"cannot read {VIDEO}"
    return tuple(frames)


def darken(image: np.ndarray, factor: float = 0.4) -> np.ndarray:
    return (image.astype(np.float32) * factor).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (15, 15), 0)


VARIANTS = {"original": lambda image: image, "dark": darken, "blurred": blur}


@functools.cache
def frames(variant: str, indices: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Video frames ``indices``, transformed by ``variant`` (original, dark, blurred)."""
    source = video()
    return tuple(VARIANTS[variant](source[i]) for i in indices)


def results(predict: Callable[[np.ndarray], Prediction], images: Sequence[np.ndarray], *,
            source: str = "camera0", version: str = "v4", wall_time: float | None = None,
            start: int = 0) -> list[FrameResult]:
    """FrameResults as the pipeline makes them, frames numbered from ``start``."""
    now = time.time() if wall_time is None else wall_time
    out = []
    for n, image in enumerate(images):
        frame = Frame(start + n, image, time.monotonic(), now, source)
        out.append(FrameResult(frame, "model", version, {}, predict(image), True))
    return out


def model_results(model: Path, variant: str, indices: range, **kwargs: object) -> list[FrameResult]:
    """The demo ``model`` on video frames ``indices`` of ``variant``."""
    return results(cached_predictor(model), frames(variant, tuple(indices)), **kwargs)  # type: ignore[arg-type]


def result_of(index: int, image: np.ndarray, prediction: Prediction | None, *,
              source: str = "camera0", wall_time: float | None = None,
              error: str | None = None) -> FrameResult:
    """One FrameResult built by hand (a constructed prediction, or a failed frame)."""
    frame = Frame(index, image, time.monotonic(), time.time() if wall_time is None else wall_time,
                  source)
    return FrameResult(frame, "model", "v4", {}, prediction, error is None, error)
