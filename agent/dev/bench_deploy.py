"""``make bench``'s deploy-gap run: the largest frame gap of each camera over whole deployments.

Two cameras (the demo video, ``pace = none``) are served by text-det v4 through the real
pipeline while the real deployment manager deploys v6, then v4 again, and so on (bundles from
``file://``). A deployment's window runs from ``received`` through download, verify, install,
load, warm, validate and the swap to the close of the old engine (the slot drained) and one
settle period after it. Every gap between two processed frames of a camera inside a window is
divided by that camera's median gap in steady state (the gaps outside every window) of the
model that served the later frame (at the swap: the slower of the two); the figure is the
largest such ratio (goal <= 1.5 quiet, <= 2 beside the hog). Each gap is also named by the
deployment step it began in, so a stall points at its cause.

Each means (a way of preparing the new model, see ``MEANS``) runs quiet and then beside a CPU
hog (one busy process per core at the agent's own priority, started and stopped here), means
after means in the same rounds, so that the machine's noise hits all of them.

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core import CameraSection, DeploySection
from agent.dev.base import Report
from agent.dev.bench_rig import NO_PROBATION, demo_rig
from agent.models import DeploymentStatus, DeployRequest
from agent.monitor import LatencyRecorder
from agent.vision import CameraSet, FrameResult, Pipeline, Scheduler

__all__ = ["DEPLOY_CAMERAS", "DEPLOY_GAP_DEPLOYS", "MEANS", "bench_deploy_gap"]

DEPLOY_CAMERAS = 2
DEPLOY_GAP_DEPLOYS = 1
"""Deployments per means and condition (v6, then v4, ...)."""
THREADS = 2
STEADY_FRAMES = 6
"""Frames of each camera served in steady state before the first deployment and after each: the medians."""
STEADY_MAX_S = 120.0
"""The longest a steady period waits for its frames (a very busy machine)."""
DEPLOY_DEADLINE_S = 180.0
"""A deployment still running past this is stopped and reported as such (a starved loader)."""
CONTROL_S = 10.0
"""The ``none`` means: a window of this length with no deployment, the machine's own jitter."""
POLL_S = 0.05
SETTLE_S = 0.5
"""Kept in the window after the old engine's close: the first frames after it are still its doing."""
HOG_START_S = 0.5
"""The hog's processes are up and spinning before the agent's first frame is timed."""
NO_BUDGET_MS = 3_600_000.0
"""The warm latency budget is not what is measured: a starved loader's slow warm-up must not fail it."""

MEANS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "thread-nice10": {"load_nice": 10, "warmup_runs": 3, "warmup_scale": 1.0},
    "thread-idle": {"load_nice": 10, "load_idle": True, "warmup_runs": 3, "warmup_scale": 1.0},
    "worker-nice10": {"load_nice": 10, "prepare_graph": True, "warmup_runs": 3, "warmup_scale": 1.0},
    "worker-idle": {"load_nice": 10, "load_idle": True, "prepare_graph": True, "warmup_runs": 3, "warmup_scale": 1.0},
    "warm-once": {"load_nice": 10, "warmup_runs": 1, "warmup_scale": 1.0},
    "warm-small": {"load_nice": 10, "warmup_runs": 3, "warmup_scale": 0.5},
    "warm-small-once": {"load_nice": 10, "warmup_runs": 1, "warmup_scale": 0.5},
    "worker-small-once": {"load_nice": 10, "prepare_graph": True, "warmup_runs": 1, "warmup_scale": 0.5},
}
"""Ways of preparing a new model beside the serving one, as ``[deploy]`` settings (``none``: no deployment
in the window, the control). Each names its warm-up in full, so a change of the defaults leaves it as it was:
``thread-nice10`` is the agent before the warm-up on a crop (three full-frame runs)."""


@dataclass
class Timeline:
    """Every processed frame's time, camera and version, and every deployment step's time."""

    frames: list[tuple[float, str, str]] = field(default_factory=list)
    steps: list[tuple[float, str]] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    unfinished: int = 0
    """Deployments stopped at DEPLOY_DEADLINE_S."""

    def seen(self, result: FrameResult) -> None:
        self.frames.append((time.perf_counter(), result.camera, result.version))

    async def step(self, status: DeploymentStatus) -> None:
        self.steps.append((time.perf_counter(), status.step.value))

    def step_at(self, when: float) -> str:
        """The deployment step in progress at ``when`` (``before``: the gap began before the deployment)."""
        if not any(began <= when <= ended for began, ended in self.windows):
            return "before"
        name = "received"
        for at, step in self.steps:
            if at > when:
                break
            name = step
        return "swap/close" if name in ("active", "committed") else name


@dataclass(frozen=True)
class Gaps:
    """One condition's figures: per camera the largest ratio, the step it began in, the medians."""

    worst: dict[str, float]
    worst_step: dict[str, str]
    medians: dict[str, dict[str, float]]
    frames: int
    deploy_s: float
    unfinished: int


def _inside(windows: list[tuple[float, float]], began: float, ended: float) -> bool:
    return any(ended >= w0 and began <= w1 for w0, w1 in windows)


def measure(timeline: Timeline) -> Gaps:
    """Per camera: the largest gap inside a deployment window over the steady median of its model."""
    by_camera: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for at, camera, version in timeline.frames:
        by_camera[camera].append((at, version))
    medians: dict[str, dict[str, float]] = {}
    worst: dict[str, float] = {}
    worst_step: dict[str, str] = {}
    for camera, frames in sorted(by_camera.items()):
        steady: dict[str, list[float]] = defaultdict(list)
        for (t0, _), (t1, v1) in itertools.pairwise(frames):
            if not _inside(timeline.windows, t0, t1):
                steady[v1].append(t1 - t0)
        medians[camera] = {v: statistics.median(g) for v, g in steady.items() if g}
        worst[camera], worst_step[camera] = 0.0, "-"
        for (t0, v0), (t1, v1) in itertools.pairwise(frames):
            if not _inside(timeline.windows, t0, t1):
                continue
            ref = max(medians[camera].get(v0, 0.0), medians[camera].get(v1, 0.0))
            if ref > 0 and (t1 - t0) / ref > worst[camera]:
                worst[camera], worst_step[camera] = (t1 - t0) / ref, timeline.step_at(t0)
    deploy_s = statistics.fmean(w1 - w0 for w0, w1 in timeline.windows) if timeline.windows else 0.0
    return Gaps(worst, worst_step, medians, len(timeline.frames), deploy_s, timeline.unfinished)


@contextlib.contextmanager
def cpu_hog(on: bool) -> Iterator[None]:
    """One busy process per core at the caller's priority while the block runs (nothing when off)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)] \
        if on else []
    try:
        if procs:
            time.sleep(HOG_START_S)
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


async def _run(demo: Path, root: Path, settings: DeploySection, deploys: int, cameras: int,
               control: bool, camera_fps: float | None = None) -> Timeline:
    rig = demo_rig(demo, root, THREADS)
    video = demo / "video.mp4"
    paced: dict[str, Any] = {"pace": "none"} if camera_fps is None else {"fps": camera_fps}
    camera_set = CameraSet([CameraSection(name=f"cam{i}", uri=str(video), loop=True, **paced)
                            for i in range(cameras)], "text-det")
    timeline = Timeline()
    pipeline = Pipeline(Scheduler(camera_set), rig.slot, LatencyRecorder(600), observers=[timeline.seen])
    manager = rig.manager(pipeline, settings, report=timeline.step)
    camera_set.start()
    pipeline.start()
    try:
        while not pipeline.first_frame.is_set():
            await asyncio.sleep(POLL_S)
        await _steady(timeline, cameras)
        for i in range(deploys):
            version = "v6" if i % 2 == 0 else "v4"
            path, digest = rig.bundles[version]
            began = time.perf_counter()
            if control:
                await asyncio.sleep(CONTROL_S)
            else:
                try:
                    await asyncio.wait_for(manager.deploy(DeployRequest(
                        name="text-det", version=version, url=path.as_uri(), sha256=digest, format="bundle",
                        probation=NO_PROBATION, deployment_id=f"gap-{i}")), DEPLOY_DEADLINE_S)
                except TimeoutError:
                    timeline.unfinished += 1
                    timeline.windows.append((began, time.perf_counter()))
                    break
                await asyncio.to_thread(rig.slot.drain)
                await asyncio.sleep(SETTLE_S)
            timeline.windows.append((began, time.perf_counter()))
            await _steady(timeline, cameras)
    finally:
        rig.stop(pipeline, camera_set, manager)
    return timeline


async def _steady(timeline: Timeline, cameras: int) -> None:
    """Serve until each camera has STEADY_FRAMES more frames (or STEADY_MAX_S passed)."""
    start, began = len(timeline.frames), time.perf_counter()
    while time.perf_counter() - began < STEADY_MAX_S:
        counts: dict[str, int] = defaultdict(int)
        for _, camera, _ in timeline.frames[start:]:
            counts[camera] += 1
        if len(counts) >= cameras and min(counts.values()) >= STEADY_FRAMES:
            return
        await asyncio.sleep(POLL_S)


def deploy_gaps(demo: Path, means: dict[str, Any] | None, hog: bool, deploys: int, cameras: int,
                camera_fps: float | None = None) -> Gaps:
    """One condition: ``deploys`` deployments with ``means``' settings, beside the hog or not; each camera
    unpaced (``camera_fps`` None: every frame as fast as the CPU allows) or at ``camera_fps``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = DeploySection(allowed_schemes=("file",), file_roots=(root,), latency_budget_ms=NO_BUDGET_MS,
                                 **(means or {}))
        with cpu_hog(hog):
            timeline = asyncio.run(_run(demo, root, settings, deploys, cameras, means is None, camera_fps))
    return measure(timeline)


def bench_deploy_gap(demo: Path, report: Report, *, deploys: int = DEPLOY_GAP_DEPLOYS, rounds: int = 1,
                     cameras: int = DEPLOY_CAMERAS, means: tuple[str, ...] = tuple(MEANS),
                     camera_fps: float | None = None) -> dict[str, list[Gaps]]:
    """Every means quiet and beside the hog, ``rounds`` times; per camera worst gap ratios to ``report``.
    ``camera_fps``: cameras at that rate (a real camera's case) instead of unpaced (the CPU saturated)."""
    load = os.getloadavg()[0]
    rate = "unpaced" if camera_fps is None else f"at {camera_fps:g} fps"
    report(f"\n== deploy gap: {cameras} cameras {rate} on text-det, {deploys} deployments (v4 <-> v6) per condition, "
           f"{rounds} round(s), load average at start {load:.1f} on {os.cpu_count()} cores ==")
    report("largest gap over a whole deployment / steady median gap of its model, per camera "
           "(goal <= 1.5 quiet, <= 2 with the hog)")
    results: dict[str, list[Gaps]] = defaultdict(list)
    for r in range(rounds):
        for name in means:
            for hog in (False, True):
                gaps = deploy_gaps(demo, MEANS[name], hog, deploys, cameras, camera_fps)
                key = f"{name} {'hog' if hog else 'quiet'}"
                results[key].append(gaps)
                cams = "  ".join(f"{c} {gaps.worst[c]:.2f} ({gaps.worst_step[c]})" for c in sorted(gaps.worst))
                meds = ", ".join(f"{v} {m * 1000:.0f}" for v, m in sorted(gaps.medians[min(gaps.medians)].items()))
                report(f"round {r + 1} {key:<24} {cams}   median gap ms {meds}; "
                       f"window {gaps.deploy_s:.1f} s"
                       + (f" (stopped at {DEPLOY_DEADLINE_S:.0f} s)" if gaps.unfinished else "")
                       + f"; load {os.getloadavg()[0]:.1f}")
    return dict(results)
