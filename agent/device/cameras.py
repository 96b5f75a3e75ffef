"""The camera set's bookkeeping in a running agent: keeping what ``cmd/cameras`` changed, and the
retained ``cameras`` topic."""

from __future__ import annotations

from pathlib import Path

from agent.core import ResultsSettings
from agent.device.startup import CamerasSource
from agent.monitor import CameraRecorders, Telemetry
from agent.vision import CameraSet, described, save_cameras
from agent.wire import CamerasPayload, Topics

__all__ = ["CameraBook"]


class CameraBook:
    """Where the camera set came from, and what follows a change to it.

    Given the set, its state file, its source (config or commands), the frame worker's
    per-camera recorders and the telemetry it publishes with; it owns no thread or task.
    """

    def __init__(self, cameras: CameraSet, path: Path, source: CamerasSource, recorders: CameraRecorders,
                 telemetry: Telemetry, topics: Topics) -> None:
        self.cameras = cameras
        self.path = path
        self.source: CamerasSource = source
        self.recorders = recorders
        self.telemetry = telemetry
        self.topics = topics

    def results_settings(self, camera: str) -> ResultsSettings | None:
        """A camera's ``results`` table as the set runs it now (None: the camera is gone)."""
        config = self.cameras.config(camera)
        return None if config is None else config.results

    def changed(self) -> None:
        """Keep the set a command left (atomically: a kill leaves the old file or the new)."""
        save_cameras(self.path, self.cameras.configs())
        self.source = "commands"
        active = {c.name for c in self.cameras.configs()}
        for name in self.recorders.names():
            if name not in active:
                self.recorders.forget(name)

    async def publish(self) -> None:
        """The retained ``cameras`` topic: the set, each camera's state and zones, and its source."""
        payload = CamerasPayload(**self.telemetry.envelope("cameras"), cameras=described(self.cameras),
                                 source=self.source)
        await self.telemetry.publish_state(self.topics.cameras, payload)
