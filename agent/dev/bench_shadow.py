"""``make bench`` part ``shadow``: serving frames/s with a shadow run beside it, against without.

The demo detector v4 serves the demo video at full rate (pace=none) through the real
pipeline; in the "on" rounds the real deployment manager loads and warms v6 and runs
it in shadow at the ``[deploy]`` default budget (every ``shadow_every_nth``-th frame,
on the model-loader thread, through the agent's shadow observer). Rounds alternate
off, on, off, ... so machine noise hits both. Reported: the serving frames/s ratio
during the shadow runs (goal >= 1 - 1/budget - 0.02), the serving frame ids skipped
(goal 0), the largest serving gap during a shadow run against the median gap
without and against the largest gap without (the same machine's noise), where the
largest gaps fall (during a candidate's comparison on the loader thread, or with
the candidate idle), and what the candidate compared and skipped.

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
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
from agent.vision import FrameResult, FrameSource, Pipeline, ShadowRunner, shadow_session_options
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
TOP_GAPS = 10
"""The largest serving gaps of the shadow rounds whose cause (the candidate comparing or not) is reported."""
SETTLE_S = 1.0
"""Pause after the pipeline's first frame and between rounds."""


class _Frames:
    """Observer: the time and frame index of every processed frame."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.indices: list[int] = []
        self.infer_ms: list[float] = []

    def __call__(self, result: FrameResult) -> None:
        self.times.append(time.perf_counter())
        self.indices.append(result.frame.index)
        self.infer_ms.append(result.timings_ms.get("infer", 0.0))

    def within(self, began: float, ended: float) -> tuple[np.ndarray, list[int], np.ndarray]:
        rows = [row for row in zip(self.times, self.indices, self.infer_ms, strict=False) if began <= row[0] <= ended]
        return np.array([t for t, _, _ in rows]), [i for _, i, _ in rows], np.array([ms for _, _, ms in rows])


class _Jobs:
    """The candidate's comparisons on the loader thread: when each ran (``submit`` timed)."""

    def __init__(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self.submit = submit
        self.spans: list[tuple[float, float]] = []

    def __call__(self, job: Callable[[], None]) -> None:
        def timed() -> None:
            began = time.perf_counter()
            try:
                job()
            finally:
                self.spans.append((began, time.perf_counter()))
        self.submit(timed)

    def which(self, began: float, ended: float, since: float) -> int:
        """The comparison (1: the first since ``since``) that ran during (part of) the gap from ``began``
        to ``ended``; 0: none did."""
        spans = sorted(span for span in self.spans if span[1] > since)
        return next((k for k, (start, end) in enumerate(spans, 1) if start < ended and end > began), 0)


@dataclass
class _Round:
    shadow: bool
    fps: float
    gaps: np.ndarray
    skipped_ids: int
    report: dict[str, Any] | None = None
    busy: np.ndarray | None = None
    """Per gap (shadow rounds): the candidate's comparison during it (1: the run's first), 0: none."""
    infer_ms: np.ndarray | None = None
    """Per gap: the serving inference time of the frame that ends it."""


def _round_of(frames: _Frames, shadow: bool, began: float, ended: float,
              report: dict[str, Any] | None = None, jobs: _Jobs | None = None) -> _Round:
    times, indices, infer_ms = frames.within(began, ended)
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    skipped = int(sum(b - a - 1 for a, b in itertools.pairwise(indices) if b > a + 1))
    busy = None if jobs is None else np.array([jobs.which(a, b, began) for a, b in itertools.pairwise(times)])
    return _Round(shadow, fps, np.diff(times), skipped, report, busy, infer_ms[1:])


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
    jobs = _Jobs(manager.run_beside)
    capped = shadow_session_options(manager.load_options, settings.shadow_threads)
    pipeline.observers.append(ShadowRunner(manager.shadow, jobs, settings.load_nice or None, capped=capped))
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
                                     manager.shadow_report(deployment_id), jobs))
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
    worst_off = max(float(r.gaps.max()) for r in off if len(r.gaps))
    on_gaps = np.concatenate([r.gaps for r in on])
    which = np.concatenate([r.busy for r in on if r.busy is not None])
    busy = which > 0
    top = np.argsort(on_gaps)[::-1][:TOP_GAPS]
    compared = sum((r.report or {}).get("frames", 0) for r in on)
    skipped = sum(sum(c.get("skipped", 0) for c in (r.report or {}).get("cameras", {}).values()) for r in on)
    report(f"serving frames/s off {statistics.median(r.fps for r in off):.1f}, "
           f"during shadow {statistics.median(r.fps for r in on):.1f}: ratio {ratio:.3f} "
           f"(goal >= {1 - 1 / budget - 0.02:.2f})")
    report(f"serving frame ids skipped {sum(r.skipped_ids for r in results)}, source overwrites {overwritten} "
           f"(goal 0)")
    report(f"largest serving gap during shadow {worst_gap * 1000:.1f} ms, median gap without "
           f"{median_gap * 1000:.1f} ms: {worst_gap / median_gap:.2f}x; largest gap without {worst_off * 1000:.1f} ms: "
           f"{worst_gap / worst_off:.2f}x of it")
    report(f"serving gap p99 without {np.percentile(np.concatenate([r.gaps for r in off]), 99) * 1000:.1f} ms, "
           f"during shadow {np.percentile(on_gaps, 99) * 1000:.1f} ms")
    if busy.any() and (~busy).any():
        report(f"during shadow, median gap with the candidate comparing {np.median(on_gaps[busy]) * 1000:.1f} ms "
               f"({int(busy.sum())} gaps), idle {np.median(on_gaps[~busy]) * 1000:.1f} ms ({int((~busy).sum())}); "
               f"of the {len(top)} largest, {int(busy[top].sum())} with it comparing, "
               f"{int((which[top] == 1).sum())} in a run's first comparison")
        later = which != 1
        report(f"largest serving gap during shadow outside a run's first comparison "
               f"{on_gaps[later].max() * 1000:.1f} ms: {on_gaps[later].max() / worst_off:.2f}x the largest without")
        infer = np.concatenate([r.infer_ms for r in on if r.infer_ms is not None])
        report(f"serving inference per frame with the candidate comparing {np.median(infer[busy]):.1f} ms, "
               f"idle {np.median(infer[~busy]):.1f} ms (median)")
    report(f"candidate: {compared} frames compared, {skipped} samples skipped (busy)")
