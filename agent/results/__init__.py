"""What the cameras see, made into output: the second stage on crops, tracks, zones and lines,
events and counts, the results payloads and their rate, snapshots.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.core import LineSettings, RateSettings, ResultsSettings, SnapshotSettings, TrackerSettings, ZoneSettings
    from agent.results.camera import CameraResults, FrameOutcome
    from agent.results.payloads import counts_payload, event_payload, results_payload
    from agent.results.publisher import HANDOFF_QUEUE, Outcome, ResultsPublisher
    from agent.results.rate import RateLimiter
    from agent.results.recognize import CtcDecoder, Reading, SecondStage, batch_crops, crop_quad
    from agent.results.snapshots import FolderSink, Snapshots, encode_jpeg, render
    from agent.results.stages import ReadPair, SecondStages, StageReading, second_stage_options
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
    "ReadPair",
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

_HOMES = {
    "CameraResults": "agent.results.camera",
    "CtcDecoder": "agent.results.recognize",
    "EVENT_KINDS": "agent.results.zones",
    "EventKind": "agent.results.zones",
    "FolderSink": "agent.results.snapshots",
    "FrameOutcome": "agent.results.camera",
    "HANDOFF_QUEUE": "agent.results.publisher",
    "LineSettings": "agent.core",
    "Outcome": "agent.results.publisher",
    "RateLimiter": "agent.results.rate",
    "RateSettings": "agent.core",
    "Reading": "agent.results.recognize",
    "ResultEvent": "agent.results.zones",
    "ResultsPublisher": "agent.results.publisher",
    "ResultsSettings": "agent.core",
    "Scene": "agent.results.zones",
    "SecondStage": "agent.results.recognize",
    "ReadPair": "agent.results.stages",
    "SecondStages": "agent.results.stages",
    "SnapshotSettings": "agent.core",
    "Snapshots": "agent.results.snapshots",
    "StageReading": "agent.results.stages",
    "TrackedObject": "agent.results.tracker",
    "Tracker": "agent.results.tracker",
    "TrackerSettings": "agent.core",
    "ZoneSettings": "agent.core",
    "batch_crops": "agent.results.recognize",
    "counts_payload": "agent.results.payloads",
    "crop_quad": "agent.results.recognize",
    "crossing_side": "agent.results.zones",
    "encode_jpeg": "agent.results.snapshots",
    "event_payload": "agent.results.payloads",
    "inside": "agent.results.zones",
    "render": "agent.results.snapshots",
    "results_payload": "agent.results.payloads",
    "second_stage_options": "agent.results.stages",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
