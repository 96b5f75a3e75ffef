"""A BGR camera frame -> the model's input tensor, and the geometry to map results back.

Two paths, chosen by the engine's input dtype:

- float32: resize/pad/crop with OpenCV, then one fused multiply-add per channel
  (``x * scale/std - mean/std``) written straight into the NCHW or NHWC tensor.
- uint8 NHWC: the model's graph does the normalisation itself (see
  ``agent.models.graph.fuse_preprocessing``); the frame is only resized and
  handed over as it is, BGR, without a copy when no resize is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agent.models import PreprocessSpec, SpecMismatchError, check_fits_input
from agent.runtime import TensorSpec
from agent.vision.errors import VisionError

__all__ = ["INTERPOLATION", "Geometry", "Preprocessor", "TransformError"]

INTERPOLATION = cv2.INTER_LINEAR
CHANNELS = 3
BGR = (0, 1, 2)
RGB_FROM_BGR = (2, 1, 0)


class TransformError(VisionError, ValueError):
    """A frame, a spec or a model output does not fit the transform asked of it."""


@dataclass(frozen=True)
class Geometry:
    """How model-input coordinates map to frame pixels for one frame size.

    ``input = frame * scale + pad - crop`` on each axis: ``scale`` is the resize,
    ``pad`` the letterbox border before it (left/top), ``crop`` the part of the
    resized image cut away (left/top). Coordinates are continuous (a box's edges),
    so the mapping is exact.
    """

    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0
    crop_x: float = 0.0
    crop_y: float = 0.0

    def __post_init__(self) -> None:
        sizes = (self.frame_width, self.frame_height, self.input_width, self.input_height)
        if min(sizes) < 1:
            raise TransformError(f"geometry sizes must be >= 1, got {sizes}")
        if not (self.scale_x > 0 and self.scale_y > 0):
            raise TransformError(f"geometry scales must be > 0, got {self.scale_x}, {self.scale_y}")

    @classmethod
    def identity(cls, width: int, height: int) -> Geometry:
        return cls(width, height, width, height, 1.0, 1.0)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Points ``[..., 2]`` (x, y) in input coordinates -> frame coordinates (not clipped)."""
        xy = np.asarray(points, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.pad_x + self.crop_x) / self.scale_x
        out[..., 1] = (xy[..., 1] - self.pad_y + self.crop_y) / self.scale_y
        return out

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """The inverse of ``to_frame``."""
        xy = np.asarray(points, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = xy[..., 0] * self.scale_x + self.pad_x - self.crop_x
        out[..., 1] = xy[..., 1] * self.scale_y + self.pad_y - self.crop_y
        return out

    def clip(self, points: np.ndarray) -> np.ndarray:
        """Frame points ``[..., 2]`` clipped into the frame."""
        out = np.array(points, dtype=np.float64)
        np.clip(out[..., 0], 0.0, self.frame_width, out=out[..., 0])
        np.clip(out[..., 1], 0.0, self.frame_height, out=out[..., 1])
        return out

    def boxes_to_frame(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Boxes ``[N, 4]`` (x1, y1, x2, y2) in input coordinates -> frame pixels."""
        corners = self.to_frame(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2))
        return (self.clip(corners) if clip else corners).reshape(-1, 4)

    def polygon_to_frame(self, polygon: np.ndarray, clip: bool = True) -> np.ndarray:
        """A polygon ``[K, 2]`` in input coordinates -> frame pixels."""
        points = self.to_frame(polygon)
        return self.clip(points) if clip else points


@dataclass(frozen=True)
class _Plan:
    """What to do to a frame of one size: resize, then pad (letterbox) or crop."""

    resize: tuple[int, int] | None
    border: tuple[int, int, int, int] | None
    crop: tuple[int, int] | None
    geometry: Geometry


class Preprocessor:
    """Turns BGR frames into one model input; built once per (spec, engine input).

    Raise TransformError at construction when the spec does not fit the input
    (rank, channels, batch, static height/width, dtype) and at ``prep`` when a
    frame is not a uint8 BGR image.
    """

    def __init__(self, spec: PreprocessSpec, tensor: TensorSpec) -> None:
        try:
            check_fits_input(spec, [tensor])
        except SpecMismatchError as exc:
            raise TransformError(str(exc)) from exc
        self.spec = spec
        self.tensor = tensor
        self.fused = tensor.dtype == np.uint8
        self.layout = "NHWC" if self.fused else spec.layout
        dims = tensor.shape[2:] if self.layout == "NCHW" else tensor.shape[1:3]
        self.height = spec.height if spec.height is not None else dims[0]
        self.width = spec.width if spec.width is not None else dims[1]
        self.resize_short = spec.resize_short
        if spec.resize == "short_side_crop":
            self._check_resize_short()
        std = np.asarray(spec.std, dtype=np.float64)
        gain = spec.scale / std
        bias = -np.asarray(spec.mean, dtype=np.float64) / std
        self._order = RGB_FROM_BGR if spec.color == "rgb" else BGR
        self._gain = tuple(float(v) for v in gain)
        self._bias = tuple(float(v) for v in bias)
        self._matrix = np.zeros((CHANNELS, CHANNELS + 1), dtype=np.float32)
        for out, src in enumerate(self._order):
            self._matrix[out, src] = gain[out]
            self._matrix[out, CHANNELS] = bias[out]
        self._last: tuple[tuple[int, int], _Plan] | None = None

    def _check_resize_short(self) -> None:
        short, crop = self.resize_short, max(self._fixed_size())
        if short is not None and short < crop:
            raise TransformError(
                f"preprocess.resize_short {short} is smaller than the crop "
                f"{self.height}x{self.width}: the crop would not fit"
            )

    def _fixed_size(self) -> tuple[int, int]:
        """(width, height) for the modes that need both; check_fits_input made sure they exist."""
        if self.width is None or self.height is None:
            raise TransformError(f"resize={self.spec.resize!r} needs a fixed height and width")
        return self.width, self.height

    @classmethod
    def for_inputs(cls, spec: PreprocessSpec, inputs: Sequence[TensorSpec]) -> Preprocessor:
        """The preprocessor for the input among an engine's ``inputs`` that ``spec`` names."""
        try:
            tensor = check_fits_input(spec, inputs)
        except SpecMismatchError as exc:
            raise TransformError(str(exc)) from exc
        return cls(spec, tensor)

    @property
    def input_name(self) -> str:
        return self.tensor.name

    def geometry(self, frame_width: int, frame_height: int) -> Geometry:
        """The geometry ``prep`` returns for frames of this size."""
        return self._plan(frame_width, frame_height).geometry

    def prep(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """The input tensor (batch 1) for one frame, and its geometry."""
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8:
            got = getattr(frame_bgr, "dtype", type(frame_bgr).__name__)
            raise TransformError(f"a frame must be a uint8 numpy array, got {got}")
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != CHANNELS or 0 in frame_bgr.shape:
            raise TransformError(f"a frame must be HxWx3 BGR, got shape {frame_bgr.shape}")
        height, width = frame_bgr.shape[:2]
        plan = self._plan(width, height)
        image = self._apply(plan, frame_bgr)
        if self.fused:
            return np.ascontiguousarray(image)[np.newaxis], plan.geometry
        return self._normalise(image), plan.geometry

    def _plan(self, width: int, height: int) -> _Plan:
        if self._last is not None and self._last[0] == (width, height):
            return self._last[1]
        plan = self._make_plan(width, height)
        self._last = ((width, height), plan)
        return plan

    def _make_plan(self, fw: int, fh: int) -> _Plan:
        mode = self.spec.resize
        if mode == "multiple":
            step = self.spec.multiple
            width = self.width if self.width is not None else max(step, fw // step * step)
            height = self.height if self.height is not None else max(step, fh // step * step)
            return self._stretch(fw, fh, (width, height))
        if mode == "letterbox":
            return self._letterbox(fw, fh, self._fixed_size())
        if mode == "short_side_crop":
            return self._short_side_crop(fw, fh, self._fixed_size())
        return self._stretch(fw, fh, self._fixed_size())

    @staticmethod
    def _stretch(fw: int, fh: int, size: tuple[int, int]) -> _Plan:
        w, h = size
        geometry = Geometry(fw, fh, w, h, w / fw, h / fh)
        return _Plan(None if (w, h) == (fw, fh) else (w, h), None, None, geometry)

    def _letterbox(self, fw: int, fh: int, size: tuple[int, int]) -> _Plan:
        w, h = size
        scale = min(w / fw, h / fh)
        nw, nh = min(w, max(1, round(fw * scale))), min(h, max(1, round(fh * scale)))
        left, top = (w - nw) // 2, (h - nh) // 2
        border = (top, h - nh - top, left, w - nw - left)
        geometry = Geometry(fw, fh, w, h, nw / fw, nh / fh, pad_x=left, pad_y=top)
        resize = None if (nw, nh) == (fw, fh) else (nw, nh)
        return _Plan(resize, border if any(border) else None, None, geometry)

    def _short_side_crop(self, fw: int, fh: int, size: tuple[int, int]) -> _Plan:
        """Scale the short side to ``resize_short`` (default: the crop's long side); crop."""
        w, h = size
        short = self.resize_short or max(size)
        if fw <= fh:
            nw, nh = short, max(short, round(fh * short / fw))
        else:
            nw, nh = max(short, round(fw * short / fh)), short
        x, y = round((nw - w) / 2), round((nh - h) / 2)
        geometry = Geometry(fw, fh, w, h, nw / fw, nh / fh, crop_x=x, crop_y=y)
        return _Plan(None if (nw, nh) == (fw, fh) else (nw, nh), None, (x, y), geometry)

    def _apply(self, plan: _Plan, frame: np.ndarray) -> np.ndarray:
        image = frame
        if plan.resize is not None:
            image = cv2.resize(image, plan.resize, interpolation=INTERPOLATION)
        if plan.border is not None:
            value = (self.spec.pad_value,) * CHANNELS
            image = cv2.copyMakeBorder(image, *plan.border, cv2.BORDER_CONSTANT, value=value)
        if plan.crop is not None:
            x, y = plan.crop
            g = plan.geometry
            image = image[y : y + g.input_height, x : x + g.input_width]
        return image

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 BGR -> float32 [1, 3, H, W] or [1, H, W, 3], one pass per channel."""
        height, width = image.shape[:2]
        if self.layout == "NHWC":
            return cv2.transform(image.astype(np.float32), self._matrix)[np.newaxis]
        tensor = np.empty((1, CHANNELS, height, width), dtype=np.float32)
        planes = cv2.split(image)
        for out, src in enumerate(self._order):
            plane = planes[src]
            cv2.addWeighted(
                plane,
                self._gain[out],
                plane,
                0.0,
                self._bias[out],
                dst=tensor[0, out],
                dtype=cv2.CV_32F,
            )
        return tensor
