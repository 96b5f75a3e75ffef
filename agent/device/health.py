"""The health and latency telemetry of a running agent, read from the parts it is given."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.monitor import (
    ProcessSampler,
    Telemetry,
    disk_free_bytes,
    memory_available_bytes,
    read_gpu_load,
    read_temperatures,
    rss_bytes,
)
from agent.mqtt import MqttSession, SqliteOutbox
from agent.results import ResultsPublisher
from agent.runtime import EngineSlot
from agent.vision import CameraSet, Pipeline, camera_rows, overwritten
from agent.wire import SessionState, Topics

__all__ = ["DeviceHealth"]

log = structlog.get_logger(__name__)


class DeviceHealth:
    """Builds and publishes ``telemetry/health`` and ``telemetry/latency``.

    Given the cameras, the frame worker (and its latency recorders), the slot, the outbox, the results publisher, the
    store's folder, the start time, the task-failure counts (a dict the agent keeps filling)
    and a callable for the MQTT session (it exists only once the agent runs). It owns the
    process CPU sampler; the agent's timers call ``publish_health`` and ``publish_latency``.
    """

    def __init__(self, *, telemetry: Telemetry, topics: Topics, cameras: CameraSet, pipeline: Pipeline,
                 slot: EngineSlot, outbox: SqliteOutbox, results: ResultsPublisher, store_root: Path,
                 started_at: float, task_failures: dict[str, int],
                 session: Callable[[], MqttSession | None]) -> None:
        self.telemetry = telemetry
        self.topics = topics
        self.cameras = cameras
        self.pipeline = pipeline
        self.slot = slot
        self.outbox = outbox
        self.results = results
        self.store_root = store_root
        self.started_at = started_at
        self.task_failures = task_failures
        self.session = session
        self.sampler = ProcessSampler()

    def fields(self) -> dict[str, Any]:
        """The health payload's fields (``status`` answers with them too)."""
        cameras = camera_rows(self.cameras, self.pipeline.cameras)
        first = cameras[0] if cameras else None
        session = self.session()
        status = session.status() if session is not None else None
        serving = self.slot.serving
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "camera": {key: first[key] for key in ("state", "reopens", "last_error", "fps")} if first else None,
            "cameras": cameras,
            "broker": {"state": status.state if status else SessionState.DISCONNECTED,
                       "reconnects": status.reconnects if status else 0},
            "model": {"name": serving.name, "version": serving.version, "runtime": serving.runtime}
            if serving else None,
            "cpu_percent": self.sampler.cpu_percent(),
            "memory_rss_bytes": rss_bytes(),
            "memory_available_bytes": memory_available_bytes() or 0,
            "temperatures_c": read_temperatures(),
            "gpu_load": read_gpu_load(),
            "disk_free_bytes": disk_free_bytes(self.store_root) or 0,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "outbox_state": self.outbox.state,
            "frames_processed": self.pipeline.counters.frames_processed,
            "task_failures": dict(self.task_failures),
            "results": self.results.health(),
        }

    async def publish_health(self) -> None:
        fields = self.fields()
        await self.telemetry.publish(self.topics.telemetry("health"), self.telemetry.health(**fields))
        log.info("health", frames_processed=fields["frames_processed"], fps=self.pipeline.recorder.snapshot().fps,
                 camera=fields["camera"]["state"] if fields["camera"] else None, broker=fields["broker"]["state"],
                 rss_mb=round(fields["memory_rss_bytes"] / 1e6, 1))

    async def publish_latency(self) -> None:
        dropped = overwritten(self.cameras)
        recorders = self.pipeline.cameras
        per_camera = {name: (snap, dropped[name]) for name in dropped
                      if (snap := recorders.snapshot(name)) is not None}
        payload = self.telemetry.latency(self.pipeline.recorder.snapshot(), self.pipeline.counters.frames_processed,
                                         sum(dropped.values()) + self.cameras.retired_overwritten, per_camera)
        await self.telemetry.publish(self.topics.telemetry("latency"), payload)
