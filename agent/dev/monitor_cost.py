"""What the monitors cost the frame worker, in microseconds per frame, on real frames.

``measure_monitor_cost(video, model_dir)`` runs the model on the video's frames
(each distinct frame once), then replays ``frames`` frames through all the
per-frame monitors (drift and bias, one shared summary) and times each call;
the timer-side work (snapshots, a leak sample, an egress check) is timed too.
Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.core import MonitorSection
from agent.monitor import BiasMonitor, DriftMonitor, LeakMonitor, Reference, ReferenceBuilder, input_stats
from agent.vision import Monitors, summarize

if TYPE_CHECKING:
    from agent.vision import FrameResult

__all__ = ["MonitorCost", "measure_monitor_cost", "time_monitors"]

DEFAULT_FRAMES = 1000
PERCENTILE = 95
US_PER_NS = 1e-3
MS_PER_NS = 1e-6


@dataclass(frozen=True)
class MonitorCost:
    frames: int
    per_frame_us_median: float
    """All per-frame monitors together (summary, drift, bias)."""
    per_frame_us_p95: float
    input_stats_us_median: float
    drift_snapshot_ms: float
    bias_snapshot_ms: float
    leak_sample_us: float
    leak_snapshot_ms: float

    def lines(self) -> list[str]:
        return [
            f"monitors per frame: median {self.per_frame_us_median:.1f} us, "
            f"p95 {self.per_frame_us_p95:.1f} us over {self.frames} frames "
            f"(input statistics alone {self.input_stats_us_median:.1f} us)",
            f"per evaluation: drift snapshot {self.drift_snapshot_ms:.2f} ms, "
            f"bias snapshot {self.bias_snapshot_ms:.2f} ms, "
            f"leak sample {self.leak_sample_us:.0f} us, "
            f"leak snapshot {self.leak_snapshot_ms:.2f} ms",
        ]


def _ns(action: Callable[[], Any]) -> int:
    start = time.perf_counter_ns()
    action()
    return time.perf_counter_ns() - start


def time_monitors(
    results: Sequence[FrameResult],
    reference: Reference | None,
    frames: int = DEFAULT_FRAMES,
    section: MonitorSection | None = None,
) -> MonitorCost:
    """Replay ``results`` (cycled, renumbered) as ``frames`` frames through drift and bias."""
    if not results:
        raise ValueError("time_monitors needs at least one frame result")
    section = section or MonitorSection()
    drift = DriftMonitor(section, reference)
    bias = BiasMonitor(section)
    leak = LeakMonitor(section)
    observer = Monitors([drift, bias])
    per_frame, stats = [], []
    for n in range(frames):
        result = results[n % len(results)]
        renumbered = replace(result, frame=replace(result.frame, index=n))
        per_frame.append(_ns(partial(observer, renumbered)))
        stats.append(_ns(partial(input_stats, renumbered.frame.image)))
    leak_sample = statistics.median(_ns(leak.sample) for _ in range(section.leak_min_samples))
    return MonitorCost(
        frames=frames,
        per_frame_us_median=round(statistics.median(per_frame) * US_PER_NS, 2),
        per_frame_us_p95=round(float(np.percentile(per_frame, PERCENTILE)) * US_PER_NS, 2),
        input_stats_us_median=round(statistics.median(stats) * US_PER_NS, 2),
        drift_snapshot_ms=round(_ns(drift.snapshot) * MS_PER_NS, 3),
        bias_snapshot_ms=round(_ns(bias.snapshot) * MS_PER_NS, 3),
        leak_sample_us=round(leak_sample * US_PER_NS, 1),
        leak_snapshot_ms=round(_ns(leak.snapshot) * MS_PER_NS, 3),
    )


def measure_monitor_cost(
    video: Path,
    model_dir: Path,
    frames: int = DEFAULT_FRAMES,
    section: MonitorSection | None = None,
) -> MonitorCost:
    """All monitors on ``frames`` real frames of ``video`` with ``model_dir``'s real predictions."""
    from agent.models import EngineOptions, load_serving, sha256_file
    from agent.monitor import LatencyRecorder
    from agent.runtime import EngineSlot
    from agent.tools import open_model, video_frames
    from agent.vision import Frame, Pipeline

    installed = open_model(model_dir)
    manifest = installed.manifest
    slot = EngineSlot()
    slot.swap(load_serving(installed, EngineOptions()))
    # No source: the frames come from the video reader, handed to process() one by one.
    pipeline = Pipeline(None, slot, LatencyRecorder(16))
    builder = ReferenceBuilder(manifest.task, manifest.head.labels)
    results = []
    try:
        for index, image in enumerate(video_frames(video, frames)):
            frame = Frame(index, image, time.monotonic(), time.time(), video.name)
            result = pipeline.process(frame)
            builder.observe(summarize(result))
            results.append(result)
    finally:
        slot.clear()
    reference = builder.build(manifest.name, manifest.version, sha256_file(installed.model_path),
                              video.name)
    return time_monitors(results, reference, frames, section)
