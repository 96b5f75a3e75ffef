"""What the cameras see, made into output: the second stage on crops, tracks, zones and lines,
events and counts, the results payloads and their rate, snapshots.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
"""

from __future__ import annotations

from .recognize import CtcDecoder, Reading, SecondStage, batch_crops, crop_quad
from .settings import (
    LineSettings,
    RateSettings,
    ResultsSettings,
    SnapshotSettings,
    TrackerSettings,
    ZoneSettings,
)
from .tracker import TrackedObject, Tracker
from .zones import EVENT_KINDS, EventKind, ResultEvent, Scene, crossing_side, inside

__all__ = [
    "EVENT_KINDS",
    "CtcDecoder",
    "EventKind",
    "LineSettings",
    "RateSettings",
    "Reading",
    "ResultEvent",
    "ResultsSettings",
    "Scene",
    "SecondStage",
    "SnapshotSettings",
    "TrackedObject",
    "Tracker",
    "TrackerSettings",
    "ZoneSettings",
    "batch_crops",
    "crop_quad",
    "crossing_side",
    "inside",
]
