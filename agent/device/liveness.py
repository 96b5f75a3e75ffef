"""systemd's view of a running agent: READY=1 once the first frame is inferred, the watchdog fed
from frame progress, STATUS= kept current."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from agent.device.systemd import Notifier, WatchdogFeeder
from agent.models import BootGuard
from agent.runtime import EngineSlot
from agent.vision import CameraSet, Pipeline

__all__ = ["FIRST_FRAME_TIMEOUT_S", "WATCHDOG_DEFAULT_PERIOD_S", "Liveness"]

log = structlog.get_logger(__name__)

FIRST_FRAME_TIMEOUT_S = 120.0
"""READY=1 waits this long for the first inferred frame before giving up."""
WATCHDOG_DEFAULT_PERIOD_S = 2.0
"""How often frame progress is checked when systemd set no watchdog interval."""

Guarded = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[bool]]
"""The agent's task boundary: runs an action, logs and counts its failure, never raises."""


class Liveness:
    """Tells systemd the agent is ready, alive (frames move on) and what it serves.

    Given the notifier, the cameras, the frame worker, the slot, the boot guard (told when a
    start is ready and when it proved stable) and the watchdog's stall bound. ``watch`` is the
    agent's watchdog task; the first-frame wait runs in a worker thread.
    """

    def __init__(self, notifier: Notifier, cameras: CameraSet, pipeline: Pipeline, slot: EngineSlot,
                 bootguard: BootGuard, stall_s: float) -> None:
        self.notifier = notifier
        self.cameras = cameras
        self.pipeline = pipeline
        self.slot = slot
        self.bootguard = bootguard
        self.stall_s = stall_s
        self._frame_loop_stalled = False

    async def ready_when_first_frame(self) -> bool:
        """READY=1 once a frame was inferred (at once with no camera enabled); False when none came in time."""
        if not self.cameras.active():  # nothing to infer yet: cmd/cameras may add a camera
            log.warning("no_camera_enabled", configured=[c.name for c in self.cameras.configs()])
            self.pipeline.first_frame.set()
        ready = await asyncio.to_thread(self.pipeline.first_frame.wait, FIRST_FRAME_TIMEOUT_S)
        if not ready:
            log.error("no_first_frame", timeout_s=FIRST_FRAME_TIMEOUT_S,
                      cameras={c.name: c.stats().state.value for c in self.cameras.active()})
            return False
        serving = self.slot.serving
        self.notifier.ready()
        self.notifier.status(f"serving {serving.name} {serving.version}" if serving else "serving")
        log.info("agent_ready", model=serving.name if serving else None)
        self.bootguard.ready()
        return True

    async def watch(self, stop: asyncio.Event, guarded: Guarded) -> None:
        """Check frame progress every watchdog interval until ``stop``; each check behind ``guarded``."""
        interval = self.notifier.watchdog_interval()
        feeder = WatchdogFeeder(self.stall_s)
        period = interval if interval else WATCHDOG_DEFAULT_PERIOD_S
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)

            async def tick() -> None:
                self.tick(feeder, interval)

            await guarded("watchdog", tick)

    def tick(self, feeder: WatchdogFeeder, interval: float | None) -> None:
        """One check of frame progress: feed systemd's watchdog and refresh STATUS= if alive."""
        now = time.monotonic()
        alive = feeder.should_ping(self.pipeline.last_heartbeat, now)
        if alive and self.bootguard.tick(now):  # a hung loop proves nothing
            record = self.bootguard.record
            log.info("start_proved_stable", version=record.version if record else None,
                     after_s=self.bootguard.window_s)
        if alive == self._frame_loop_stalled:
            self._frame_loop_stalled = not alive
            if self._frame_loop_stalled:
                log.error("frame_loop_stalled", stall_s=self.stall_s)
            else:
                log.info("frame_loop_resumed")
        if alive:
            if interval:
                self.notifier.watchdog()
            serving = self.slot.serving
            if serving is not None:
                fps = self.pipeline.recorder.snapshot().fps
                self.notifier.status(f"serving {serving.name} {serving.version} at {fps:.1f} fps")
