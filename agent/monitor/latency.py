"""Per-stage latency percentiles and frame rate over a sliding window of frames."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["STAGES", "CameraRecorders", "LatencyRecorder", "LatencySnapshot", "StageStats"]

STAGES = ("capture_wait", "preprocess", "infer", "postprocess", "end_to_end")


@dataclass(frozen=True)
class StageStats:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    count: int


@dataclass(frozen=True)
class LatencySnapshot:
    window_frames: int
    fps: float
    frames_processed: int
    stages: dict[str, StageStats]


class LatencyRecorder:
    """A ring buffer of per-frame stage timings; written by the frame worker, read by telemetry.

    Recording is a few array stores under a lock (well under a microsecond of
    Python work per stage), so it costs the frame loop nothing measurable.
    """

    def __init__(self, window: int, stages: tuple[str, ...] = STAGES) -> None:
        self.window = window
        self.stages = stages
        self._lock = threading.Lock()
        self._values = np.zeros((len(stages), window), dtype=np.float64)
        self._times = np.zeros(window, dtype=np.float64)
        self._next = 0
        self.frames_processed = 0

    def record(self, timings_ms: dict[str, float], at: float | None = None) -> None:
        stamp = time.monotonic() if at is None else at
        with self._lock:
            slot = self._next
            for row, stage in enumerate(self.stages):
                self._values[row, slot] = timings_ms.get(stage, np.nan)
            self._times[slot] = stamp
            self._next = (slot + 1) % self.window
            self.frames_processed += 1

    def snapshot(self) -> LatencySnapshot:
        with self._lock:
            filled = min(self.frames_processed, self.window)
            values = self._values[:, :filled].copy()
            times = self._times[:filled].copy()
            processed = self.frames_processed
        stages = {}
        for row, stage in enumerate(self.stages):
            column = values[row][~np.isnan(values[row])]
            if column.size == 0:
                continue
            p50, p95, p99 = np.percentile(column, (50, 95, 99))
            stages[stage] = StageStats(
                round(float(p50), 3), round(float(p95), 3), round(float(p99), 3),
                round(float(column.max()), 3), int(column.size),
            )
        fps = 0.0
        if filled >= 2:
            span = float(times.max() - times.min())
            fps = (filled - 1) / span if span > 0 else 0.0
        return LatencySnapshot(filled, round(fps, 3), processed, stages)


class CameraRecorders:
    """One LatencyRecorder per camera (made on its first frame), and its failed frames.

    A camera that is removed keeps its recorder until ``forget``: telemetry then
    stops listing it.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._recorders: dict[str, LatencyRecorder] = {}
        self._errors: dict[str, int] = {}

    def record(self, camera: str, timings_ms: dict[str, float], failed: bool) -> None:
        recorder = self._recorders.get(camera)
        if recorder is None:
            with self._lock:
                recorder = self._recorders.setdefault(camera, LatencyRecorder(self.window))
                self._errors.setdefault(camera, 0)
        if failed:
            with self._lock:
                self._errors[camera] = self._errors.get(camera, 0) + 1
        else:
            recorder.record(timings_ms)

    def snapshot(self, camera: str) -> LatencySnapshot | None:
        recorder = self._recorders.get(camera)
        return None if recorder is None else recorder.snapshot()

    def errors(self, camera: str) -> int:
        with self._lock:
            return self._errors.get(camera, 0)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._recorders)

    def forget(self, camera: str) -> None:
        with self._lock:
            self._recorders.pop(camera, None)
            self._errors.pop(camera, None)
