"""``make bench-swaps``: memory, file descriptors and threads over many alternating hot swaps.

The real deployment manager deploys text-det v6, v4, v6, ... (bundles from ``file://``:
download, verify, unpack, install, load, warm, validate, swap) while the real pipeline
serves one camera of the demo video at ``SERVE_FPS``. After each swap the old engine's
close is waited for (the slot drained) and the process's RSS, open file descriptors and
threads (``/proc/self/task``: ONNX Runtime's pools too) are sampled. The figures, after
the first ``WARMUP_SWAPS`` (arenas, caches and the store's two versions settle): RSS
growth, its Theil-Sen slope against its noise (1.4826 x the median absolute deviation of
the residuals around that line), and the range of fds and threads (goal: growth < 5 MB,
slope x swaps within the noise, fds and threads flat).

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
from typing import Any

from agent.core import CameraSection, DeploySection
from agent.dev.base import DevError, Report
from agent.models import (
    DeploymentManager,
    DeployRequest,
    EngineOptions,
    ModelStore,
    Probation,
    load_serving,
    pack_bundle,
    sha256_file,
)
from agent.monitor import LatencyRecorder, rss_bytes
from agent.runtime import EngineSlot
from agent.vision import CameraSet, Pipeline, Scheduler

__all__ = ["NO_PROBATION", "SWAPS", "WARMUP_SWAPS", "SwapFigures", "demo_bundles", "nothing", "run_swaps", "theil_sen"]

SWAPS = 1000
WARMUP_SWAPS = 20
"""Swaps before the figures count: ONNX Runtime's arenas, glibc's heaps and the store settle."""
SERVE_FPS = 1.0
"""The camera's rate while swapping: frames keep leasing the engine, the CPU goes to the swaps
(at a rate v6 can keep up with on a busy 2-core machine; beside a saturated serving loop the loader starves)."""
THREADS = 2
REPORT_EVERY = 50
NO_PROBATION = Probation(3600.0, 1.0, 0, 100.0)
"""Probation that never fails a swap (the next deployment commits it early)."""
FIRST_FRAME_S = 60.0
"""The longest the camera's first frame may take (a cold, busy machine)."""


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
        return slice(min(WARMUP_SWAPS, max(len(self.rss) - 2, 0)), None)

    @property
    def growth_mb(self) -> float:
        rss = self.rss[self.counted()]
        return (rss[-1] - rss[0]) / 1e6 if rss else 0.0

    @property
    def slope_kb(self) -> float:
        return theil_sen([r / 1e3 for r in self.rss[self.counted()]])

    @property
    def noise_kb(self) -> float:
        """1.4826 x the median absolute deviation of RSS around its Theil-Sen line (kB)."""
        rss = [r / 1e3 for r in self.rss[self.counted()]]
        if len(rss) < 3:
            return 0.0
        slope = self.slope_kb
        residuals = [r - slope * i for i, r in enumerate(rss)]
        centre = statistics.median(residuals)
        return 1.4826 * statistics.median(abs(r - centre) for r in residuals)

    @property
    def slope_within_noise(self) -> bool:
        """The trend over the counted swaps is no larger than the noise around it."""
        counted = len(self.rss[self.counted()])
        return abs(self.slope_kb) * counted <= max(self.noise_kb, 1.0) * 2

    def span(self, values: list[int]) -> tuple[int, int]:
        counted = values[self.counted()]
        return (min(counted), max(counted)) if counted else (0, 0)

    def lines(self) -> list[str]:
        fd_lo, fd_hi = self.span(self.fds)
        th_lo, th_hi = self.span(self.threads)
        counted = len(self.rss[self.counted()])
        return [
            f"swaps {len(self.rss)} in {self.seconds:.0f} s; counted after the first {len(self.rss) - counted}",
            f"RSS {self.rss[0] / 1e6:.1f} MB after the first swap, {self.rss[-1] / 1e6:.1f} MB after the last; "
            f"growth over the counted swaps {self.growth_mb:+.1f} MB (goal < 5 MB)",
            f"Theil-Sen slope {self.slope_kb:+.2f} kB/swap ({self.slope_kb * counted / 1e3:+.2f} MB over "
            f"{counted} swaps) against noise {self.noise_kb / 1e3:.2f} MB: "
            f"{'within' if self.slope_within_noise else 'beyond'} the noise",
            f"open fds {fd_lo}..{fd_hi}, threads {th_lo}..{th_hi} over the counted swaps (goal: flat)",
        ]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    """Native threads of this process (Python's and ONNX Runtime's intra-op pools alike)."""
    return len(os.listdir("/proc/self/task"))


async def nothing(*_: Any) -> None:
    """The manager's ``report`` and ``swapped`` callables in a bench: nobody listens."""
    return None


def demo_bundles(demo: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """text-det v4 and v6 of the demo as bundles under ``root``, with their sha256."""
    out = {}
    for version in ("v4", "v6"):
        path = root / f"text-det-{version}.tar"
        pack_bundle(demo / "models" / f"text-det-{version}", path)
        out[version] = (path, sha256_file(path))
    return out


async def _swaps(demo: Path, root: Path, swaps: int, progress: Callable[[int, SwapFigures], None]) -> SwapFigures:
    store = ModelStore(root / "engines", keep=3)
    store.install(demo / "models" / "text-det-v4")
    bundles = demo_bundles(demo, root)
    slot = EngineSlot()
    options = EngineOptions(threads=THREADS)
    slot.swap(load_serving(store.current("text-det"), options))
    cameras = CameraSet([CameraSection(name="cam0", uri=str(demo / "video.mp4"), loop=True, fps=SERVE_FPS)],
                        "text-det")
    pipeline = Pipeline(Scheduler(cameras), slot, LatencyRecorder(600))
    settings = DeploySection(allowed_schemes=("file",), file_roots=(root,), latency_budget_ms=3_600_000.0,
                             warmup_runs=1, prepare_graph=True)
    manager = DeploymentManager(store=store, slot=slot, options=options, settings=settings, public_key=None,
                                feeds_for=pipeline.feeds_for, stats=pipeline.counters.stats,
                                report=nothing, swapped=nothing)
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
            path, digest = bundles[version]
            await manager.deploy(DeployRequest(name="text-det", version=version, url=path.as_uri(), sha256=digest,
                                               format="bundle", probation=NO_PROBATION, deployment_id=f"swap-{i}"))
            await asyncio.to_thread(slot.drain)
            rss.append(rss_bytes())
            fds.append(open_fds())
            threads.append(thread_count())
            if (i + 1) % REPORT_EVERY == 0:
                progress(i + 1, SwapFigures(rss, fds, threads, time.monotonic() - began))
    finally:
        pipeline.stop(10.0)
        cameras.stop()
        manager.close()
        slot.clear()
        slot.drain()
    return SwapFigures(rss, fds, threads, time.monotonic() - began)


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
