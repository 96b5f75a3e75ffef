"""The vision package."""

from __future__ import annotations

from agent.vision.cameras import (
    CAMERAS_FILE,
    CameraError,
    CameraSet,
    camera_entry,
    camera_rows,
    described,
    first_frame_error,
    load_cameras,
    overwritten,
    save_cameras,
)
from agent.vision.heads import Classification, Detection, Prediction, make_head, softmax
from agent.vision.pipeline import MAX_BATCH_FRAMES, FrameResult, Pipeline
from agent.vision.preprocess import Geometry, Preprocessor, TransformError
from agent.vision.scheduler import Scheduler
from agent.vision.shadow import ShadowRunner
from agent.vision.sources import Frame, FrameSource, redact_uri
from agent.vision.summary import Monitors, summarize

__all__ = [
    "CAMERAS_FILE",
    "MAX_BATCH_FRAMES",
    "CameraError",
    "CameraSet",
    "Classification",
    "Detection",
    "Frame",
    "FrameResult",
    "FrameSource",
    "Geometry",
    "Monitors",
    "Pipeline",
    "Prediction",
    "Preprocessor",
    "Scheduler",
    "ShadowRunner",
    "TransformError",
    "camera_entry",
    "camera_rows",
    "described",
    "first_frame_error",
    "load_cameras",
    "make_head",
    "overwritten",
    "redact_uri",
    "save_cameras",
    "softmax",
    "summarize",
]
