"""The second stage on crops: each text box of the detector read by a CTC text recognizer.

Steps, as PP-OCR does them (rapidocr's ``get_rotate_crop_image`` and
``TextRecognizer``): the quad of each box is cut out of the frame with a
perspective warp (a tall crop is turned a quarter so the text runs along x), each
crop is resized to the recognizer's input height keeping its aspect, the crops of
one frame are padded on the right to the widest of them (at least the manifest's
``width``) and inferred as one batch, and the per-step character probabilities
are decoded greedily (``CtcDecoder``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.models import Manifest, PreprocessSpec, confined
from agent.runtime import Engine
from agent.vision import Detection, TransformError

__all__ = [
    "MAX_CROP_ASPECT",
    "TALL_CROP_RATIO",
    "CtcDecoder",
    "NonFiniteReading",
    "Reading",
    "SecondStage",
    "batch_crops",
    "crop_quad",
]

BLANK = 0
"""CTC's blank is class 0; the dictionary's characters follow it."""
TALL_CROP_RATIO = 1.5
"""A crop at least this much taller than wide is vertical text: turned a quarter (as in PP-OCR)."""
MAX_CROP_ASPECT = 40.0
"""Widest crop accepted, in heights: a line of text across a 4K frame; bounds the batch width."""
MIN_CROP_SIDE = 1
Point = tuple[float, float]
Quad = tuple[Point, ...]


class NonFiniteReading(TransformError):
    """The recognizer's output holds NaN or infinity: nothing it read can be trusted (counted in probation)."""


@dataclass(frozen=True)
class Reading:
    """What the recognizer read in one box: the text and its mean per-character probability."""

    text: str
    confidence: float
    polygon: tuple[Point, ...]


class CtcDecoder:
    """Greedy CTC decode: best class per step, repeats merged, blanks dropped.

    Class ``i + 1`` is ``characters[i]``; one class past the dictionary is a space
    (PaddleOCR's ``use_space_char``), so a model has ``len(characters) + 2`` classes.
    """

    def __init__(self, characters: Sequence[str]) -> None:
        if not characters:
            raise TransformError("a CTC dictionary needs at least one character")
        self.classes = ("", *characters, " ")

    @classmethod
    def read(cls, path: Path) -> CtcDecoder:
        """The dictionary file: UTF-8, one character a line."""
        text = path.read_text(encoding="utf-8")
        return cls(text.removesuffix("\n").split("\n"))

    def decode(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """``[N, steps, classes]`` probabilities -> (text, mean probability of its characters) per row."""
        if probs.ndim != 3 or probs.shape[2] != len(self.classes):
            raise TransformError(
                f"ctc needs an output [N, steps, {len(self.classes)}] for this dictionary, got {probs.shape}"
            )
        score = probs.max(axis=2)  # NaN propagates through max: one check per step, not per class
        if not np.isfinite(score).all():
            raise NonFiniteReading(f"the recognizer's output {probs.shape} holds NaN or infinity")
        best = probs.argmax(axis=2)
        keep = best != BLANK
        keep[:, 1:] &= best[:, 1:] != best[:, :-1]
        out = []
        for row, mask, p in zip(best, keep, score, strict=True):
            text = "".join(self.classes[i] for i in row[mask])
            out.append((text, float(p[mask].mean()) if mask.any() else 0.0))
        return out


def crop_quad(frame: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The quad (top-left, top-right, bottom-right, bottom-left) warped upright out of ``frame``."""
    pts = np.asarray(quad, dtype=np.float32).reshape(4, 2)
    width = max(MIN_CROP_SIDE, round(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3]))))
    height = max(MIN_CROP_SIDE, round(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2]))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(frame, matrix, (width, height), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)
    if height >= TALL_CROP_RATIO * width:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def _resized(crop: np.ndarray, height: int) -> np.ndarray:
    aspect = min(crop.shape[1] / crop.shape[0], MAX_CROP_ASPECT)
    return cv2.resize(crop, (max(1, math.ceil(height * aspect)), height), interpolation=cv2.INTER_LINEAR)


def batch_crops(crops: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """BGR crops -> one float32 NCHW batch: height ``spec.height``, aspect kept, padded on the right
    (with what ``pad_value`` becomes once normalised) to the widest crop, at least ``spec.width``."""
    if spec.height is None or spec.width is None:
        raise TransformError("a recognizer's preprocess needs height and width")
    resized = [_resized(c, spec.height) for c in crops]
    width = max([spec.width, *(r.shape[1] for r in resized)])
    order = (2, 1, 0) if spec.color == "rgb" else (0, 1, 2)
    gain = np.array([spec.scale / s for s in spec.std], dtype=np.float32)
    bias = np.array([m / s for m, s in zip(spec.mean, spec.std, strict=True)], dtype=np.float32)
    pad = spec.pad_value * gain - bias
    batch = np.empty((len(crops), 3, spec.height, width), dtype=np.float32)
    batch[:] = pad[None, :, None, None]
    for i, image in enumerate(resized):
        pixels = image[:, :, order].astype(np.float32) * gain - bias
        batch[i, :, :, : image.shape[1]] = pixels.transpose(2, 0, 1)
    return batch


def _padded_frames(crops: Sequence[np.ndarray], spec: PreprocessSpec) -> list[np.ndarray]:
    """The crops for a model with fused preprocessing: uint8 [1, H, W, 3] BGR each, padded on the right
    to the widest, as in a batch (the recognizer reads spaces differently with less padding)."""
    assert spec.height is not None and spec.width is not None
    resized = [_resized(c, spec.height) for c in crops]
    width = max([spec.width, *(r.shape[1] for r in resized)])
    frames = []
    for image in resized:
        frame = np.full((1, spec.height, width, 3), spec.pad_value, dtype=np.uint8)
        frame[0, :, : image.shape[1]] = image
        frames.append(frame)
    return frames


class SecondStage:
    """A recognizer run on the text boxes of one frame: ``stage(frame, detections)`` -> readings.

    Built from the recognizer's engine and manifest (``task: recognize``, head
    ``ctc``) and the folder that holds its dictionary. An engine with a float32
    input takes the crops of a frame as one batch; one with fused preprocessing
    (uint8 frames, batch 1) takes them one by one.
    """

    def __init__(self, engine: Engine, manifest: Manifest, folder: Path) -> None:
        if manifest.task != "recognize" or manifest.head.kind != "ctc" or manifest.head.dictionary is None:
            raise TransformError(
                f"{manifest.name} {manifest.version}: a second stage needs task recognize with a ctc head "
                f"and a dictionary, got {manifest.task}/{manifest.head.kind}"
            )
        if manifest.preprocess.height is None or manifest.preprocess.width is None:
            raise TransformError(f"{manifest.name} {manifest.version}: preprocess needs height and width")
        self.engine = engine
        self.manifest = manifest
        try:
            self.decoder = CtcDecoder.read(confined(folder, manifest.head.dictionary, "head.dictionary"))
        except (OSError, UnicodeDecodeError) as exc:
            raise TransformError(f"{manifest.name} {manifest.version}: cannot read the dictionary: {exc}") from exc
        spec = engine.inputs[0]
        self._input = manifest.preprocess.input_name or spec.name
        self._batched = spec.dtype == np.float32
        self._output = manifest.head.output_name
        self._check_classes()

    def _check_classes(self) -> None:
        """The dictionary fits the output: as many classes as its characters, the blank and the space."""
        outputs = [o for o in self.engine.outputs if self._output is None or o.name == self._output][:1]
        classes = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if classes is not None and classes != len(self.decoder.classes):
            raise TransformError(
                f"{self.manifest.name} {self.manifest.version}: the dictionary's {len(self.decoder.classes) - 2} "
                f"characters (with the blank and the space, {len(self.decoder.classes)} classes) do not fit the "
                f"output's {classes} classes")

    def _probs(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if self._output is None:
            return np.asarray(next(iter(outputs.values())))
        if self._output not in outputs:
            raise TransformError(f"output {self._output!r} not in the outputs {list(outputs)}")
        return np.asarray(outputs[self._output])

    def feeds(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The engine's input for ``crops`` as one inference takes them: the batch, or the first crop
        of an engine that takes them one by one (to warm a new version up on real crops)."""
        spec = self.manifest.preprocess
        return {self._input: batch_crops(crops, spec) if self._batched else _padded_frames(crops[:1], spec)[0]}

    def read_crops(self, crops: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) for each BGR crop; NonFiniteReading when the output holds NaN or infinity."""
        if not crops:
            return []
        spec = self.manifest.preprocess
        if self._batched:
            return self.decoder.decode(self._probs(self.engine.infer({self._input: batch_crops(crops, spec)})))
        out: list[tuple[str, float]] = []
        for frame in _padded_frames(crops, spec):
            out += self.decoder.decode(self._probs(self.engine.infer({self._input: frame})))
        return out

    @staticmethod
    def crops(frame: np.ndarray, detections: Sequence[Detection]) -> tuple[list[Quad], list[np.ndarray]]:
        """Each detection's quad and its crop cut upright out of ``frame``, in order."""
        quads = [_quad(d) for d in detections]
        return quads, [crop_quad(frame, np.asarray(q, dtype=np.float32)) for q in quads]

    def read(self, quads: Sequence[Quad], crops: Sequence[np.ndarray]) -> tuple[Reading, ...]:
        """A reading per crop, with the quad it was cut from."""
        results = self.read_crops(crops)
        return tuple(
            Reading(text, confidence, quad) for (text, confidence), quad in zip(results, quads, strict=True)
        )

    def __call__(self, frame: np.ndarray, detections: Sequence[Detection]) -> tuple[Reading, ...]:
        """A reading per detection, in order; a box without a polygon is read as its rectangle."""
        return self.read(*self.crops(frame, detections))


def _quad(detection: Detection) -> Quad:
    if detection.polygon is not None and len(detection.polygon) == 4:
        return detection.polygon
    x1, y1, x2, y2 = detection.box
    return ((x1, y1), (x2, y1), (x2, y2), (x1, y2))
