"""``make bench`` part ``shadow``: serving frames/s with a shadow run beside it, against without.

The demo detector v4 serves the demo video at full rate (pace=none) through the real
pipeline; in the "on" rounds the real deployment manager loads and warms v6 and runs
it in shadow at the ``[deploy]`` default budget (every ``shadow_every_nth``-th frame,
on the model-loader thread, through the agent's shadow observer). Rounds alternate
off, on, off, ... so machine noise hits both. Reported: the serving frames/s ratio
during the shadow runs (goal >= 1 - 1/budget - 0.02), the serving frame ids skipped
(goal 0), the largest serving gap during a shadow run against the median gap
without, and what the candidate compared and skipped.

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.core import DeploySection, SourceSection
from agent.dev.base import Report
from agent.models import (
    DeployFailed,
    DeploymentManager,
    DeploymentStatus,
    DeployRequest,
    EngineOptions,
    ModelStore,
    ShadowSpec,
    load_serving,
    pack_bundle,
    sha256_file,
)
from agent.monitor import LatencyRecorder
from agent.runtime import EngineSlot
from agent.vision import FrameResult, FrameSource, Pipeline, ShadowRunner
from agent.wire import DeploymentStep

__all__ = ["SHADOW_ROUNDS", "SHADOW_S", "bench_shadow"]

THREADS = 2
"""Engine threads, as the other benches (agent.dev.bench.THREADS)."""
SHADOW_S = 20.0
"""Length of one round, seconds: a shadow run of this long, or as long without one."""
SHADOW_ROUNDS = 2
"""On rounds (each with an off round before it)."""
UNREACHABLE_FRAMES = 10**9
"""A shadow run's ``min_frames`` that it never reaches: it lasts its whole duration (then is discarded)."""
LATENCY_BUDGET_MS = 60_000.0
"""The candidate's warm-up bound: this bench measures the serving side, it does not judge the candidate (v6
warms at the loader's niceness, which on a loaded 2-core machine took 5 s)."""
SETTLE_S = 1.0
"""Pause after the pipeline's first frame and between rounds."""


class _Frames:
    """Observer: the time and frame index of every processed frame."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.indices: list[int] = []

    def __call__(self, result: FrameResult) -> None:
        self.times.append(time.perf_counter())
        self.indices.append(result.frame.index)

    def within(self, began: float, ended: float) -> tuple[np.ndarray, list[int]]:
        pairs = [(t, i) for t, i in zip(self.times, self.indices, strict=False) if began <= t <= ended]
        return np.array([t for t, _ in pairs]), [i for _, i in pairs]


@dataclass
class _Round:
    shadow: bool
    fps: float
    gaps: np.ndarray
    skipped_ids: int
    report: dict[str, Any] | None = None


def _round_of(frames: _Frames, shadow: bool, began: float, ended: float,
              report: dict[str, Any] | None = None) -> _Round:
    times, indices = frames.within(began, ended)
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    skipped = int(sum(b - a - 1 for a, b in itertools.pairwise(indices) if b > a + 1))
    return _Round(shadow, fps, np.diff(times), skipped, report)


async def _rounds(demo: Path, root: Path, rounds: int, seconds: float, report: Report) -> tuple[list[_Round], int]:
    store = ModelStore(root / "engines", keep=3)
    store.install(demo / "models" / "text-det-v4")
    bundle = root / "text-det-v6.tar"
    pack_bundle(demo / "models" / "text-det-v6", bundle)
    digest = sha256_file(bundle)
    slot = EngineSlot()
    options = EngineOptions(threads=THREADS)
    slot.swap(load_serving(store.current("text-det"), options))
    source = FrameSource(SourceSection(uri=str(demo / "video.mp4"), loop=True, pace="none", name="bench"))
    frames = _Frames()
    pipeline = Pipeline(source, slot, LatencyRecorder(600), observers=[frames])
    settings = DeploySection(allowed_schemes=("file",), file_roots=(root,), latency_budget_ms=LATENCY_BUDGET_MS)
    shadow_began: dict[str, float] = {}
    """When each deployment's shadow run began (its first ``shadow`` status)."""

    async def status(current: DeploymentStatus) -> None:
        if current.step is DeploymentStep.SHADOW:
            shadow_began.setdefault(current.deployment_id, time.perf_counter())

    async def nothing(*_: Any) -> None:
        return None

    manager = DeploymentManager(
        store=store, slot=slot, options=options, settings=settings, public_key=None,
        feeds_for=pipeline.feeds_for, stats=pipeline.counters.stats, report=status, swapped=nothing)
    pipeline.observers.append(ShadowRunner(manager.shadow, manager.run_beside, settings.load_nice or None))
    spec = ShadowSpec(min_agreement=settings.shadow_min_agreement, min_frames=UNREACHABLE_FRAMES,
                      every_nth=settings.shadow_every_nth)
    results: list[_Round] = []
    source.start()
    pipeline.start()
    try:
        while not pipeline.first_frame.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE_S)
        for i in range(rounds):
            began = time.perf_counter()
            await asyncio.sleep(seconds)
            results.append(_round_of(frames, False, began, time.perf_counter()))
            deployment_id = f"bench-shadow-{i}"
            try:
                await manager.deploy(DeployRequest(
                    name="text-det", version="v6", url=bundle.as_uri(), sha256=digest, format="bundle",
                    deployment_id=deployment_id, shadow=spec, shadow_duration_s=seconds))
            except DeployFailed as exc:  # the run never reaches its frames: discarded at its end, as meant
                if exc.step is not DeploymentStep.SHADOW:
                    raise
            results.append(_round_of(frames, True, shadow_began[deployment_id], time.perf_counter(),
                                     manager.shadow_report(deployment_id)))
            report(f"  round {i + 1}/{rounds}: off {results[-2].fps:.1f} frames/s, shadow {results[-1].fps:.1f}")
            await asyncio.sleep(SETTLE_S)
    finally:
        pipeline.stop(10.0)
        source.stop()
        manager.close()
        slot.clear()
    return results, source.stats().frames_dropped


def bench_shadow(demo: Path, report: Report, *, rounds: int = SHADOW_ROUNDS, seconds: float = SHADOW_S) -> None:
    budget = DeploySection().shadow_every_nth
    report(f"\n== shadow: v6 beside v4 at the default budget (every {budget}th frame), {rounds} x {seconds:.0f} s "
           f"on and off, at full rate (pace=none) ==")
    with tempfile.TemporaryDirectory() as tmp:
        results, overwritten = asyncio.run(_rounds(demo, Path(tmp), rounds, seconds, report))
    off = [r for r in results if not r.shadow]
    on = [r for r in results if r.shadow]
    ratio = statistics.median(r.fps for r in on) / statistics.median(r.fps for r in off)
    median_gap = float(np.median(np.concatenate([r.gaps for r in off])))
    worst_gap = max(float(r.gaps.max()) for r in on if len(r.gaps))
    compared = sum((r.report or {}).get("frames", 0) for r in on)
    skipped = sum(sum(c.get("skipped", 0) for c in (r.report or {}).get("cameras", {}).values()) for r in on)
    report(f"serving frames/s off {statistics.median(r.fps for r in off):.1f}, "
           f"during shadow {statistics.median(r.fps for r in on):.1f}: ratio {ratio:.3f} "
           f"(goal >= {1 - 1 / budget - 0.02:.2f})")
    report(f"serving frame ids skipped {sum(r.skipped_ids for r in results)}, source overwrites {overwritten} "
           f"(goal 0)")
    report(f"largest serving gap during shadow {worst_gap * 1000:.1f} ms, median gap without "
           f"{median_gap * 1000:.1f} ms: {worst_gap / median_gap:.2f}x")
    report(f"candidate: {compared} frames compared, {skipped} samples skipped (busy)")
