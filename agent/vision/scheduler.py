"""Which frames the engine takes next: round-robin over the cameras with a fresh frame.

Each camera keeps only its newest frame (agent.vision.sources), so a camera the
engine cannot keep up with loses old frames (counted as overwritten), never its
turn. A turn starts at the camera after the last one served and goes once
round the set, taking at most one frame per camera: no camera is served twice
before every other camera with a fresh frame was served once, which is what
"never starving one" means here. A camera with an ``fps`` cap is not taken from
before its next due time; its frames wait in its mailbox (and are overwritten).
The region of interest is cut here, a view of the frame, without a copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from agent.vision.cameras import Camera, CameraSet
from agent.vision.sources import Frame

__all__ = ["Scheduler"]

log = structlog.get_logger(__name__)

CAP_RESYNC_PERIODS = 1.0
"""A capped camera this many periods behind its schedule starts a new one instead of bursting."""


class Scheduler:
    """Hands the frame worker batches of fresh frames, at most one per camera per batch."""

    def __init__(self, cameras: CameraSet, clock: Callable[[], float] = time.monotonic) -> None:
        self.cameras = cameras
        self._clock = clock
        self._cursor = 0

    def next_batch(self, limit: int, timeout: float) -> list[Frame]:
        """Up to ``limit`` frames of different cameras, waiting up to ``timeout`` for the first."""
        condition = self.cameras.condition
        with condition:
            deadline = self._clock() + max(0.0, timeout)
            while True:
                now = self._clock()
                batch, wake = self._take(max(1, limit), now)
                if batch or now >= deadline:
                    return batch
                condition.wait(min(deadline, wake) - now if wake is not None else deadline - now)

    def _take(self, limit: int, now: float) -> tuple[list[Frame], float | None]:
        cameras = self.cameras.active()
        batch: list[Frame] = []
        wake: float | None = None
        count = len(cameras)
        last: int | None = None
        for step in range(count):
            position = (self._cursor + step) % count
            camera = cameras[position]
            if camera.next_due > now:
                wake = camera.next_due if wake is None else min(wake, camera.next_due)
                continue
            frame = camera.source.get(0.0)
            if frame is None:
                continue
            self._served(camera, now)
            frame = self._region(camera, frame)
            if frame is None:
                continue
            batch.append(frame)
            last = position
            if len(batch) >= limit:
                break
        if last is not None:
            self._cursor = last + 1
        return batch, wake

    @staticmethod
    def _served(camera: Camera, now: float) -> None:
        camera.frames_taken += 1
        fps = camera.config.fps
        if fps is None:
            return
        period = 1.0 / fps
        behind = now - camera.next_due > CAP_RESYNC_PERIODS * period
        camera.next_due = (now if behind else camera.next_due) + period

    @staticmethod
    def _region(camera: Camera, frame: Frame) -> Frame | None:
        roi = camera.config.roi
        if roi is None:
            return frame
        x, y, width, height = roi
        image = frame.image[y : y + height, x : x + width]
        if image.size == 0:
            camera.roi_misses += 1
            if camera.roi_misses == 1:
                log.warning("camera_roi_outside_frame", camera=camera.name, roi=list(roi),
                            frame=list(frame.image.shape[:2][::-1]))
            return None
        return replace(frame, image=image)
