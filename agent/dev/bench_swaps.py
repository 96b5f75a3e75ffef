"""``make bench-swaps``: memory, file descriptors and threads over many alternating hot swaps.

The real deployment manager deploys text-det v6, v4, v6, ... (bundles from ``file://``:
download, verify, unpack, install, load, warm, validate, swap) while the real pipeline
serves one camera of the demo video at ``SERVE_FPS``. After each swap the old engine's
close is waited for (the slot drained), the new model serves a frame, and the process's RSS, open file descriptors and
threads (``/proc/self/task``: ONNX Runtime's pools too) are sampled. The figures, after
the first ``WARMUP_SWAPS`` (arenas, caches and the store's two versions settle), for each
serving model apart (RSS with v6 serving and with v4 serving differ by their arenas): RSS
growth (the median of the last tenth of the samples minus that of the first), its Theil-Sen
trend against its noise (1.4826 x the median absolute deviation of the residuals around that
line), and the range of fds and threads (goal: growth < 5 MB,
trend within the noise, fds and threads flat).

The swaps use ``prepare_graph`` (the optimised graph is made once per version) and one
warm-up run, so a thousand of them take minutes, not hours; what they exercise is the
load, the swap and the close, which is where memory would be lost.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.core import CameraSection, DeploySection
from agent.dev.base import DevError, Report
from agent.dev.bench_rig import NO_PROBATION, demo_rig
from agent.models import (
    DeployRequest,
)
from agent.monitor import LatencyRecorder, rss_bytes
from agent.vision import CameraSet, Pipeline, Scheduler

__all__ = ["SWAPS", "WARMUP_SWAPS", "SwapFigures", "run_swaps", "theil_sen"]

SWAPS = 1000
WARMUP_SWAPS = 20
"""Swaps before the figures count: ONNX Runtime's arenas, glibc's heaps and the store settle."""
SERVE_FPS = 2.0
"""The camera's rate while swapping: frames keep leasing the engine, the CPU goes to the swaps
(at a rate v6 can keep up with on a busy 2-core machine; beside a saturated serving loop the loader starves)."""
THREADS = 2
REPORT_EVERY = 50
GROWTH_SHARE = 0.1
"""Growth compares the medians of the first and the last tenth of the counted swaps of one serving model."""
FIRST_FRAME_S = 60.0
"""The longest the camera's first frame may take (a cold, busy machine)."""
SERVED_S = 60.0
"""The longest a new model may take to serve its first frame after its swap (a busy machine)."""
POLL_S = 0.02


def theil_sen(values: list[float]) -> float:
    """The median of the slopes between every pair of points (robust to a few outliers)."""
    n = len(values)
    if n > 400:  # O(n^2) pairs: thin the series evenly, the median slope barely moves
        step = n / 400
        picked = [int(i * step) for i in range(400)]
        pairs = [(values[picked[j]] - values[picked[i]]) / (picked[j] - picked[i])
                 for i in range(400) for j in range(i + 1, 400)]
    else:
        pairs = [(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    return statistics.median(pairs) if pairs else 0.0


@dataclass(frozen=True)
class SwapFigures:
    """RSS (bytes), open fds and threads after each swap's old engine closed."""

    rss: list[int]
    fds: list[int]
    threads: list[int]
    seconds: float

    def counted(self) -> slice:
        return slice(min(WARMUP_SWAPS, max(len(self.rss) - 4, 0)), None)

    def serving(self) -> dict[str, list[float]]:
        """RSS (MB) of the counted swaps by the model serving after them: v6 after even swaps, v4 after
        odd ones. The two differ by the size of their arenas, so each is judged against itself."""
        start = self.counted().start or 0
        return {version: [r / 1e6 for i, r in enumerate(self.rss) if i >= start and i % 2 == parity]
                for version, parity in (("v6", 0), ("v4", 1))}

    @staticmethod
    def growth(series: list[float]) -> float:
        """The median of the last ``GROWTH_SHARE`` of the series minus that of the first (MB): a lone sample
        taken while an arena is still held (~110 MB above the rest, a few percent of samples) moves it not."""
        edge = max(1, round(len(series) * GROWTH_SHARE))
        return statistics.median(series[-edge:]) - statistics.median(series[:edge]) if series else 0.0

    @classmethod
    def trend(cls, series: list[float]) -> tuple[float, float, float]:
        """Growth (``growth``), Theil-Sen trend over the series and the noise around it, in MB."""
        if len(series) < 3:
            return 0.0, 0.0, 0.0
        slope = theil_sen(series)
        residuals = [r - slope * i for i, r in enumerate(series)]
        centre = statistics.median(residuals)
        noise = 1.4826 * statistics.median(abs(r - centre) for r in residuals)
        return cls.growth(series), slope * len(series), noise

    @property
    def growth_mb(self) -> float:
        """The larger growth of the two serving models' RSS over the counted swaps."""
        return max((self.trend(s)[0] for s in self.serving().values()), key=abs, default=0.0)

    @property
    def slope_within_noise(self) -> bool:
        """Each serving model's Theil-Sen trend over the counted swaps is within 2x its noise (1 MB at least)."""
        return all(abs(trend) <= 2 * max(noise, 1.0) for _, trend, noise in map(self.trend, self.serving().values()))

    def span(self, values: list[int]) -> tuple[int, int]:
        counted = values[self.counted()]
        return (min(counted), max(counted)) if counted else (0, 0)

    def lines(self) -> list[str]:
        fd_lo, fd_hi = self.span(self.fds)
        th_lo, th_hi = self.span(self.threads)
        counted = len(self.rss[self.counted()])
        lines = [f"swaps {len(self.rss)} in {self.seconds:.0f} s; counted after the first {len(self.rss) - counted}"]
        for version, series in self.serving().items():
            growth, trend, noise = self.trend(series)
            if series:
                lines.append(
                    f"RSS with {version} serving: {series[0]:.1f} -> {series[-1]:.1f} MB over {len(series)} swaps, "
                    f"growth {growth:+.1f} MB (median of the last tenth - the first; goal < 5 MB); "
                    f"Theil-Sen trend {trend:+.2f} MB "
                    f"({trend * 1000 / max(len(series), 1) / 2:+.2f} kB/swap) against noise {noise:.2f} MB: "
                    f"{'within' if abs(trend) <= 2 * max(noise, 1.0) else 'beyond'} the noise")
        lines.append(f"open fds {fd_lo}..{fd_hi}, threads {th_lo}..{th_hi} over the counted swaps (goal: flat)")
        return lines


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    """Native threads of this process (Python's and ONNX Runtime's intra-op pools alike)."""
    return len(os.listdir("/proc/self/task"))


async def _swaps(demo: Path, root: Path, swaps: int, progress: Callable[[int, SwapFigures], None]) -> SwapFigures:
    rig = demo_rig(demo, root, THREADS)
    cameras = CameraSet([CameraSection(name="cam0", uri=str(demo / "video.mp4"), loop=True, fps=SERVE_FPS)],
                        "text-det")
    pipeline = Pipeline(Scheduler(cameras), rig.slot, LatencyRecorder(600))
    settings = DeploySection(allowed_schemes=("file",), file_roots=(root,), latency_budget_ms=3_600_000.0,
                             warmup_runs=1, prepare_graph=True)
    manager = rig.manager(pipeline, settings)
    rss: list[int] = []
    fds: list[int] = []
    threads: list[int] = []
    cameras.start()
    pipeline.start()
    began = time.monotonic()
    try:
        if not await asyncio.to_thread(pipeline.first_frame.wait, FIRST_FRAME_S):
            raise DevError(f"no frame of {demo / 'video.mp4'} within {FIRST_FRAME_S:.0f} s")
        for i in range(swaps):
            version = "v6" if i % 2 == 0 else "v4"
            path, digest = rig.bundles[version]
            await manager.deploy(DeployRequest(name="text-det", version=version, url=path.as_uri(), sha256=digest,
                                               format="bundle", probation=NO_PROBATION, deployment_id=f"swap-{i}"))
            await asyncio.to_thread(rig.slot.drain)
            await _served_by(pipeline, version, i)
            rss.append(rss_bytes())
            fds.append(open_fds())
            threads.append(thread_count())
            if (i + 1) % REPORT_EVERY == 0:
                progress(i + 1, SwapFigures(rss, fds, threads, time.monotonic() - began))
    finally:
        rig.stop(pipeline, cameras, manager)
    return SwapFigures(rss, fds, threads, time.monotonic() - began)


async def _served_by(pipeline: Pipeline, version: str, swap: int) -> None:
    """Wait until ``version`` has served a frame: its arenas then hold a whole frame's tensors (the
    warm-up ran on a crop), as on a device, before the sample."""
    deadline = time.monotonic() + SERVED_S
    while (last := pipeline.last_result) is None or last.version != version:
        if time.monotonic() > deadline:
            raise DevError(f"swap {swap}: {version} served no frame within {SERVED_S:g} s of its swap")
        await asyncio.sleep(POLL_S)


def run_swaps(demo: Path, swaps: int, report: Report) -> SwapFigures:
    """``swaps`` alternating deployments v4 <-> v6 (see the module docstring); figures to ``report``."""
    if swaps < 2:
        raise DevError("at least 2 swaps are needed (one each way)")
    report(f"\n== {swaps} hot swaps text-det v4 <-> v6 through the deployment manager, one camera at "
           f"{SERVE_FPS:g} fps ==")

    def progress(done: int, figures: SwapFigures) -> None:
        report(f"  {done}/{swaps} swaps, {figures.seconds:.0f} s, RSS {figures.rss[-1] / 1e6:.1f} MB, "
               f"fds {figures.fds[-1]}, threads {figures.threads[-1]}")

    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_swaps(demo, Path(tmp), swaps, progress))
    for line in figures.lines():
        report(line)
    return figures
