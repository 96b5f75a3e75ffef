"""The vision package.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
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
    from agent.vision.capture import redact_uri
    from agent.vision.heads import Classification, Detection, Prediction, make_head, softmax
    from agent.vision.pipeline import MAX_BATCH_FRAMES, FrameResult, Pipeline, PipelineCounters
    from agent.vision.preprocess import Geometry, Preprocessor, TransformError
    from agent.vision.scheduler import Scheduler
    from agent.vision.shadow import ShadowRunner, shadow_session_options
    from agent.vision.sources import Frame, FrameSource
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
    "PipelineCounters",
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
    "shadow_session_options",
    "softmax",
    "summarize",
]

_HOMES = {
    "CAMERAS_FILE": "agent.vision.cameras",
    "CameraError": "agent.vision.cameras",
    "CameraSet": "agent.vision.cameras",
    "Classification": "agent.vision.heads",
    "Detection": "agent.vision.heads",
    "Frame": "agent.vision.sources",
    "FrameResult": "agent.vision.pipeline",
    "FrameSource": "agent.vision.sources",
    "Geometry": "agent.vision.preprocess",
    "MAX_BATCH_FRAMES": "agent.vision.pipeline",
    "Monitors": "agent.vision.summary",
    "Pipeline": "agent.vision.pipeline",
    "PipelineCounters": "agent.vision.pipeline",
    "Prediction": "agent.vision.heads",
    "Preprocessor": "agent.vision.preprocess",
    "Scheduler": "agent.vision.scheduler",
    "ShadowRunner": "agent.vision.shadow",
    "shadow_session_options": "agent.vision.shadow",
    "TransformError": "agent.vision.preprocess",
    "camera_entry": "agent.vision.cameras",
    "camera_rows": "agent.vision.cameras",
    "described": "agent.vision.cameras",
    "first_frame_error": "agent.vision.cameras",
    "load_cameras": "agent.vision.cameras",
    "make_head": "agent.vision.heads",
    "overwritten": "agent.vision.cameras",
    "redact_uri": "agent.vision.capture",
    "save_cameras": "agent.vision.cameras",
    "softmax": "agent.vision.heads",
    "summarize": "agent.vision.summary",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
