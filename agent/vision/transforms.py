"""Frames in, predictions out: the preprocessing and the heads, in one place.

``Preprocessor(spec, engine_input).prep(frame) -> (tensor, geometry)`` feeds a
model; ``make_head(spec)(outputs, geometry) -> Prediction`` reads it. The
implementations live in ``preprocess``, ``heads`` and ``textdet``.
"""

from __future__ import annotations

from agent.vision.heads import Classification, Detection, Head, Prediction, make_head, nms, softmax
from agent.vision.preprocess import Geometry, Preprocessor, TransformError

__all__ = [
    "Classification",
    "Detection",
    "Geometry",
    "Head",
    "Prediction",
    "Preprocessor",
    "TransformError",
    "make_head",
    "nms",
    "softmax",
]
