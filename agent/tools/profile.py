"""``edge-agent model profile``: run a model on sample frames and store its reference statistics.

The frames go through the same pipeline as on the device (preprocessing,
inference, head) and the same per-frame summary as the live drift monitor, so
the reference and the live window measure exactly the same things. The result
is written into the model folder's manifest.json as ``reference``; the other
files' hashes in the manifest stay valid (manifest.json is not among them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog

from agent.core import Progress
from agent.models import (
    MANIFEST_FILE,
    EngineOptions,
    InstalledModel,
    Manifest,
    ManifestError,
    load_serving,
    sha256_file,
)
from agent.monitor import LatencyRecorder, ReferenceBuilder, ReferenceDataError
from agent.runtime import EngineError, EngineSlot
from agent.tools.errors import ToolError
from agent.vision import Frame, Pipeline, summarize

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_FRAMES",
    "IMAGE_SUFFIXES",
    "ProfileError",
    "image_frames",
    "open_model",
    "profile",
    "video_frames",
    "write_reference",
]

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
LATENCY_WINDOW = 16
DEFAULT_FRAMES = 300
"""Frames profiled by default, spread evenly over the video (or the first images of a folder)."""
DEFAULT_BINS = 10
"""Histogram bins per statistic by default (the drift monitor compares the live window on the same bins)."""
PROGRESS_STAGE = "profile"
"""The stage each profiled frame is reported under."""


class ProfileError(ToolError, RuntimeError):
    """The model or the sample frames cannot be profiled; the message says which and why."""


def video_frames(path: Path, limit: int = DEFAULT_FRAMES) -> Iterator[np.ndarray]:
    """Up to ``limit`` frames spread evenly over the video (every frame when it is short)."""
    if not path.is_file():
        raise ProfileError(f"video {path} does not exist or is not a file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ProfileError(f"OpenCV cannot open the video {path}")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        step = max(1, total // limit) if total > 0 else 1
        index = taken = 0
        while taken < limit:
            ok, image = capture.read()
            if not ok:
                break
            if index % step == 0:
                taken += 1
                yield image
            index += 1
    finally:
        capture.release()


def image_frames(folder: Path, limit: int = DEFAULT_FRAMES) -> Iterator[np.ndarray]:
    """The images of ``folder`` (by name), up to ``limit``."""
    if not folder.is_dir():
        raise ProfileError(f"image folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ProfileError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ProfileError(f"OpenCV cannot read the image {path}")
        yield image


def open_model(model: Path | InstalledModel) -> InstalledModel:
    """A model folder (manifest.json beside the model file) or an installed model of the store."""
    if isinstance(model, InstalledModel):
        return model
    try:
        return InstalledModel(Manifest.read(model / MANIFEST_FILE), model)
    except ManifestError as exc:
        raise ProfileError(str(exc)) from exc


def profile(
    model: Path | InstalledModel,
    frames: Iterable[np.ndarray],
    *,
    source: str = "frames",
    options: EngineOptions | None = None,
    bins: int = DEFAULT_BINS,
    progress: Progress | None = None,
    expected: int = 0,
) -> dict[str, Any]:
    """The reference statistics of ``model`` on ``frames`` (BGR uint8 images), as a dict.

    ``progress`` is told of each frame profiled, out of ``expected`` (at most: a short video gives fewer;
    0 when not known), and of the whole once the frames run out."""
    installed = open_model(model)
    manifest = installed.manifest
    if not installed.model_path.is_file():
        raise ProfileError(f"{installed.model_path}: the model file is missing")
    sha256 = sha256_file(installed.model_path)
    listed = manifest.files.get(manifest.model_file)
    if listed is not None and listed != sha256:
        raise ProfileError(f"{installed.model_path}: sha256 {sha256[:12]}... is not the manifest's "
                           f"{listed[:12]}...")
    try:
        serving = load_serving(installed, options or EngineOptions())
    except (EngineError, ValueError) as exc:
        raise ProfileError(f"cannot load {manifest.name} {manifest.version}: {exc}") from exc
    slot = EngineSlot()
    slot.swap(serving)
    # No source: the frames come from the iterator, handed to process() one by one.
    pipeline = Pipeline(None, slot, LatencyRecorder(LATENCY_WINDOW))
    builder = ReferenceBuilder(manifest.task, manifest.head.labels, bins)
    try:
        done = 0
        for index, image in enumerate(frames):
            frame = Frame(index, image, time.monotonic(), time.time(), source)
            builder.observe(summarize(pipeline.process(frame)))
            done = index + 1
            if progress is not None and done < expected:
                progress(PROGRESS_STAGE, done, expected)
        if progress is not None:
            progress(PROGRESS_STAGE, done, done)
        reference = builder.build(manifest.name, manifest.version, sha256, source)
    except ReferenceDataError as exc:
        raise ProfileError(f"{manifest.name} {manifest.version}: {exc}") from exc
    finally:
        slot.clear()
    log.info("model_profiled", model=manifest.name, version=manifest.version, frames=builder.frames,
             failed=builder.failed, source=source)
    return reference.model_dump(mode="json")


def write_reference(folder: Path, reference: dict[str, Any]) -> Path:
    """Store ``reference`` in ``folder``/manifest.json (atomically: a reader sees old or new)."""
    path = folder / MANIFEST_FILE
    try:
        manifest = Manifest.read(path)
    except ManifestError as exc:
        raise ProfileError(str(exc)) from exc
    text = manifest.model_copy(update={"reference": reference}).to_json()
    tmp = path.with_name(f".{MANIFEST_FILE}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path
