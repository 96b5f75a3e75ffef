"""DB text detection post-processing: probability map -> scored, unclipped rotated boxes.

The same steps as PP-OCR's ``DBPostProcess`` (fast box score, no dilation):
binarise the map, trace the contours, fit each a minimum-area rectangle, score
it by the mean probability inside, and grow ("unclip") it by
``area * unclip_ratio / perimeter`` on every side, since DB is trained to
predict shrunk text kernels. PP-OCR grows the polygon with pyclipper and refits
a rectangle; for a rectangle that is exactly the rectangle with each side moved
out by the offset, which is what ``unclip`` computes with plain geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from agent.models import HeadSpec

__all__ = [
    "MAX_TEXT_CANDIDATES",
    "UNCLIPPED_MIN_SIZE_MARGIN",
    "box_score",
    "order_quad",
    "text_boxes",
    "unclip",
]

MAX_TEXT_CANDIDATES = 1000
"""Contours looked at per map at most (PP-OCR's ``max_candidates``)."""
UNCLIPPED_MIN_SIZE_MARGIN = 2
"""An unclipped box's short side must exceed ``min_size`` by this much (as in PP-OCR)."""

Rect = tuple[Sequence[float], Sequence[float], float]
"""A rotated rectangle as OpenCV gives it: centre, (width, height), angle in degrees."""


def order_quad(points: np.ndarray) -> np.ndarray:
    """Four corners ordered top-left, top-right, bottom-right, bottom-left."""
    pts = np.asarray(points, dtype=np.float64).reshape(4, 2)
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1], kind="stable")]
    top_right, bottom_right = right[np.argsort(right[:, 1], kind="stable")]
    return np.stack([top_left, top_right, bottom_right, bottom_left])


def box_score(prob: np.ndarray, quad: np.ndarray) -> float:
    """Mean probability inside ``quad``, computed on its bounding-box crop only."""
    height, width = prob.shape
    x0 = int(np.clip(np.floor(quad[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(quad[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(quad[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(quad[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = (quad - (x0, y0)).astype(np.int32)
    cv2.fillPoly(mask, [shifted], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def unclip(rect: Rect, ratio: float) -> Rect:
    """The rotated rectangle with each side moved out by ``area * ratio / perimeter``."""
    centre, (w, h), angle = rect
    perimeter = 2.0 * (w + h)
    offset = w * h * ratio / perimeter if perimeter > 0 else 0.0
    return centre, (w + 2.0 * offset, h + 2.0 * offset), angle


def text_boxes(prob: np.ndarray, spec: HeadSpec) -> list[tuple[np.ndarray, float]]:
    """Rotated text boxes in map coordinates: (ordered quad [4, 2], score), best first."""
    prob = np.asarray(prob, dtype=np.float32)
    bitmap = (prob > spec.bin_threshold).astype(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    height, width = prob.shape
    found: list[tuple[np.ndarray, float]] = []
    for contour in contours[:MAX_TEXT_CANDIDATES]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < spec.min_size:
            continue
        score = box_score(prob, cv2.boxPoints(rect))
        if score < spec.box_threshold:
            continue
        grown = unclip(rect, spec.unclip_ratio)
        if min(grown[1]) < spec.min_size + UNCLIPPED_MIN_SIZE_MARGIN:
            continue
        quad = order_quad(cv2.boxPoints(grown))
        np.clip(quad[:, 0], 0, width, out=quad[:, 0])
        np.clip(quad[:, 1], 0, height, out=quad[:, 1])
        found.append((quad, score))
    found.sort(key=lambda item: -item[1])
    return found[: spec.max_detections]
