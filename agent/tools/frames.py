"""Frames for the model tools: evenly spaced from a video file, or the images of a folder.

Frames come out as the camera gives them to the agent: uint8 BGR, HxWx3.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from agent.tools.errors import FramesError

__all__ = ["COVER_POOL", "IMAGE_SUFFIXES", "covering_frames", "hold_out", "read_frames", "read_image_frames",
           "read_video_frames"]

T = TypeVar("T")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
THUMBNAIL = (32, 24)
"""Frames are compared as 32x24 grey thumbnails: enough to tell scenes apart, cheap for thousands of frames."""
COVER_POOL = 4
"""Covering selection picks from this many times the frames asked for, spread over the video."""


def _check_count(count: int) -> None:
    if count < 1:
        raise FramesError(f"asked for {count} frames; need at least 1")


def hold_out(frames: Sequence[T], count: int) -> tuple[list[T], list[T]]:
    """(rest, held-out): ``count`` of ``frames`` spread evenly over them are held out (the first ``count``
    frames would hold out only the start of a video, a different scene from the rest)."""
    step = max(1, len(frames) // count) if count else 0
    held = set(range(step // 2, len(frames), step)[:count]) if count else set()
    return ([frame for i, frame in enumerate(frames) if i not in held],
            [frames[i] for i in sorted(held)])


def read_video_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the video (all of them when it is shorter)."""
    _check_count(count)
    if not path.is_file():
        raise FramesError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FramesError(f"{path}: OpenCV cannot open it as a video")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = (
            set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
            if total > 0 else None
        )
        frames: list[np.ndarray] = []
        index = 0
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            if wanted is None or index in wanted:
                frames.append(frame)
            index += 1
    finally:
        capture.release()
    if not frames:
        raise FramesError(f"{path}: no frame could be decoded")
    return frames


def read_image_frames(folder: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` images of ``folder`` (sorted by name), as BGR frames."""
    _check_count(count)
    if not folder.is_dir():
        raise FramesError(f"{folder}: not a directory of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FramesError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    frames = []
    for path in paths[:count]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FramesError(f"{path}: OpenCV cannot read it as an image")
        frames.append(image)
    return frames


def read_frames(count: int, *, video: Path | None = None, images: Path | None = None) -> list[np.ndarray]:
    """Frames from exactly one of a video or an image folder."""
    if (video is None) == (images is None):
        raise FramesError("give exactly one of a video file or an image folder")
    if video is not None:
        return read_video_frames(video, count)
    assert images is not None
    return read_image_frames(images, count)


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    small: np.ndarray = cv2.resize(grey, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return small


def covering_frames(frames: list[np.ndarray], count: int) -> list[np.ndarray]:
    """``count`` of ``frames`` chosen to cover what they show: farthest-point sampling on thumbnails.

    Starts from the frame farthest from the mean (an unusual scene first), then repeatedly takes
    the frame least like any chosen so far, so a pan that lingers on one view does not fill the
    calibration set with it. Returned in their original order.
    """
    _check_count(count)
    if count >= len(frames):
        return list(frames)
    points = np.stack([_thumbnail(frame) for frame in frames])
    chosen = [int(np.argmax(np.linalg.norm(points - points.mean(axis=0), axis=1)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < count:
        index = int(np.argmax(distance))
        chosen.append(index)
        distance = np.minimum(distance, np.linalg.norm(points - points[index], axis=1))
    return [frames[i] for i in sorted(chosen)]
