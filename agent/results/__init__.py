"""What the cameras see, made into output: the second stage on crops, tracks, zones and lines,
events and counts, the results payloads and their rate, snapshots.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names."""

from __future__ import annotations

from agent.core import LineSettings, RateSettings, ResultsSettings, SnapshotSettings, TrackerSettings, ZoneSettings
from agent.results.camera import CameraResults, FrameOutcome
from agent.results.payloads import counts_payload, event_payload, results_payload
from agent.results.publisher import HANDOFF_QUEUE, Outcome, ResultsPublisher
from agent.results.rate import RateLimiter
from agent.results.recognize import CtcDecoder, Reading, SecondStage, batch_crops, crop_quad
from agent.results.snapshots import FolderSink, Snapshots, encode_jpeg, render
from agent.results.stages import SecondStages, StageReading, second_stage_options
from agent.results.tracker import TrackedObject, Tracker
from agent.results.zones import EVENT_KINDS, EventKind, ResultEvent, Scene, crossing_side, inside

__all__ = [
    "EVENT_KINDS",
    "HANDOFF_QUEUE",
    "CameraResults",
    "CtcDecoder",
    "EventKind",
    "FolderSink",
    "FrameOutcome",
    "LineSettings",
    "Outcome",
    "RateLimiter",
    "RateSettings",
    "Reading",
    "ResultEvent",
    "ResultsPublisher",
    "ResultsSettings",
    "Scene",
    "SecondStage",
    "SecondStages",
    "SnapshotSettings",
    "Snapshots",
    "StageReading",
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
    "second_stage_options",
]
