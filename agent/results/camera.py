"""One camera's results, per frame, in the order the parts need: track, scene, snapshots, rate.

``CameraResults.on_frame`` is what a frame worker calls after the head (and the second
stage) of a camera's frame; it returns what to publish, and publishes nothing itself:
building the payloads (``results_payload``, ``event_payload``, ``counts_payload``) and
sending them is the caller's, as is the boundary that keeps a failure here from
stopping inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.core import ResultsSettings
from agent.results.rate import RateLimiter
from agent.results.snapshots import FolderSink, MqttSink, Picture, Snapshots, SnapshotSink
from agent.results.tracker import TrackedObject, Tracker
from agent.results.zones import ResultEvent, Scene
from agent.vision import Detection

__all__ = ["CameraResults", "FrameOutcome"]


@dataclass(frozen=True)
class FrameOutcome:
    """What one frame gave: its tracked objects, its events (each with its snapshot's name or
    None), whether its results go out now (the rate), the counts when they changed, and the
    events' pictures to send when the camera's snapshots go over MQTT."""

    tracked: tuple[TrackedObject, ...]
    events: tuple[tuple[ResultEvent, str | None], ...]
    publish: bool
    counts: dict[str, dict[str, int]] | None
    pictures: tuple[Picture, ...] = ()


class CameraResults:
    """Tracker, zones and lines, snapshots and rate of one camera. Not thread-safe: the camera's
    frames come one after the other."""

    def __init__(self, camera: str, settings: ResultsSettings, state_dir: Path) -> None:
        self.camera = camera
        self.settings = settings
        self.tracker = Tracker(settings.tracker)
        self.scene = Scene(settings)
        self.rate = RateLimiter(settings.rate)
        folder = settings.snapshots.folder
        self.mqtt_sink = MqttSink() if settings.snapshots.sink == "mqtt" else None
        sink: SnapshotSink = self.mqtt_sink or FolderSink(folder if folder.is_absolute() else state_dir / folder,
                                                          settings.snapshots)
        self.snapshots = Snapshots(camera, settings.snapshots, sink)
        self._counts: dict[str, dict[str, int]] | None = None

    def on_frame(self, frame: np.ndarray, frame_id: int, capture_ts: float, now: float,
                 detections: Sequence[Detection]) -> FrameOutcome:
        """``now``: a monotonic clock reading for the rate; ``capture_ts``: the frame's unix time."""
        tracked = self.tracker.update(detections)
        events = self.scene.update(frame_id, capture_ts, tracked)
        self.snapshots.observe(frame, frame_id, tracked)
        with_pictures = tuple((e, self.snapshots.on_event(e)) for e in events)
        counts = self.scene.counts()
        changed = counts if counts != self._counts else None
        self._counts = counts
        publish = self.rate.admit(now, self.scene.track_ids())
        pictures = self.mqtt_sink.take() if self.mqtt_sink is not None else ()
        return FrameOutcome(tracked, with_pictures, publish, changed, pictures)
