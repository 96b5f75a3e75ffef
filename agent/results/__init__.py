"""What the cameras see, made into output: the second stage on crops, tracks, zones and lines,
events and counts, the results payloads and their rate, snapshots.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
"""

from __future__ import annotations

from ..config_results import (
    LineSettings,
    RateSettings,
    ResultsSettings,
    SnapshotSettings,
    TrackerSettings,
    ZoneSettings,
)
from .camera import CameraResults, FrameOutcome
from .payloads import (
    BoxItem,
    ClassifyResult,
    ClassItem,
    CountsPayload,
    DetectResult,
    ObjectEventData,
    ResultsPayload,
    TextItem,
    TextResult,
    counts_payload,
    event_payload,
    results_payload,
)
from .publisher import HANDOFF_QUEUE, Outcome, ResultsPublisher
from .rate import RateLimiter
from .recognize import CtcDecoder, Reading, SecondStage, batch_crops, crop_quad
from .snapshots import FolderSink, Snapshots, encode_jpeg, render
from .tracker import TrackedObject, Tracker
from .zones import EVENT_KINDS, EventKind, ResultEvent, Scene, crossing_side, inside

__all__ = [
    "EVENT_KINDS",
    "HANDOFF_QUEUE",
    "BoxItem",
    "CameraResults",
    "ClassItem",
    "ClassifyResult",
    "CountsPayload",
    "CtcDecoder",
    "DetectResult",
    "EventKind",
    "FolderSink",
    "FrameOutcome",
    "LineSettings",
    "ObjectEventData",
    "Outcome",
    "RateLimiter",
    "RateSettings",
    "Reading",
    "ResultEvent",
    "ResultsPayload",
    "ResultsPublisher",
    "ResultsSettings",
    "Scene",
    "SecondStage",
    "SnapshotSettings",
    "Snapshots",
    "TextItem",
    "TextResult",
    "TrackedObject",
    "Tracker",
    "TrackerSettings",
    "ZoneSettings",
    "batch_crops",
    "counts_payload",
    "crop_quad",
    "crossing_side",
    "encode_jpeg",
    "event_payload",
    "inside",
    "render",
    "results_payload",
]
