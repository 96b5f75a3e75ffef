"""Real frames and real model outputs for the monitor tests.

Frames come from the demo video through cv2.VideoCapture; predictions from the
demo models served as on the device (load_serving, then the frame pipeline's
own ``Pipeline.process``), remembered per image so that tests share model runs.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import MANIFEST_FILE, Manifest
from agent.models.store import InstalledModel
from agent.monitor.latency import LatencyRecorder
from agent.runtime.slot import EngineSlot
from agent.vision.pipeline import FrameResult, Pipeline
from agent.vision.sources import Frame
from agent.vision.transforms import Classification, Detection, Prediction

__all__ = ["Classification", "Detection", "FrameResult", "Prediction"]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo"
VIDEO = DEMO / "video.mp4"
TEXT_DET = DEMO / "models" / "text-det-v4"
ORIENTATION = DEMO / "models" / "orientation-0.0.11"
SCENE_FRAMES = 45
"""The demo video shows each photo for 45 frames: text, page, astronaut, coffee, chelsea, rocket."""
ORIENTATION_LABELS = ("0", "90", "180", "270")
LATENCY_WINDOW = 16


def open_model(folder: Path) -> InstalledModel:
    return InstalledModel(Manifest.read(folder / MANIFEST_FILE), folder)


class CachedPredictor:
    """A demo model served through the frame pipeline; remembers its prediction per image content."""

    def __init__(self, folder: Path) -> None:
        installed = open_model(folder)
        self.task = installed.manifest.task
        self.slot = EngineSlot()
        # One intra-op thread, as the test agents run: beside three other test workers on two cores a second
        # thread only adds its hand-offs (about 13% more CPU a text-det frame here, the same outputs).
        self.slot.swap(load_serving(installed, EngineOptions(threads=1)))
        self.pipeline = Pipeline(None, self.slot, LatencyRecorder(LATENCY_WINDOW))  # process() needs no source
        self._memo: dict[bytes, Prediction] = {}

    def __call__(self, image: np.ndarray) -> Prediction:
        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest() + str(image.shape).encode()
        found = self._memo.get(key)
        if found is None:
            result = self.pipeline.process(Frame(0, image, time.monotonic(), time.time(), "test"))
            assert result.error is None and result.prediction is not None, result.error
            found = self._memo[key] = result.prediction
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
