"""``make bench``: side-by-side measurements on the demo model and video, reported as ratios.

1. pipeline: frames/s of the whole agent pipeline (capture thread decoding the
   demo video, preprocessing, inference, postprocessing) against a bare ONNX
   Runtime loop on the same model, same threads, pre-made input tensors.
   Rounds alternate (bare, pipeline, bare, ...) so machine noise hits both.
2. swap: N hot-swaps between two real models (PP-OCRv4 and PP-OCRv6 text
   detectors) through the real deployment manager while the pipeline runs at
   full rate: skipped frames, the worst gap between processed frames around a
   swap against the median gap, and RSS growth over the swaps.
3. cameras: 1, 2, 4, 8 cameras on one engine, batched and unbatched, against a bare
   engine loop at the same batch size, fairness across cameras, and the RTSP
   recovery time from a real RTSP server (see ``agent.dev.bench_cameras``).
4. results: frames/s of the pipeline with results, tracking, zones, a line and events on
   (the agent's ``ResultsPublisher`` as the frame observer, every frame published, its
   asyncio side encoding each payload for a broker session that takes it) against off,
   interleaved in the same rounds, and the observer's cost per frame (see ``bench_results``).
5. shadow: serving frames/s with v6 in shadow beside v4 at the default budget against
   without, and the largest serving gap during the shadow runs (see ``agent.dev.bench_shadow``).
6. stages: frames/s of the pipeline with the results publisher reading each published frame's
   text boxes with the recognizer (text-rec) against without, and its ms per crop (see ``bench_stages``).
7. liveview: frames/s of the pipeline with the live view serving one MJPEG client against
   off, alternating rounds, and its costs per frame and per JPEG (see ``bench_liveview``).
8. deploy-gap: per camera, the largest frame gap over whole deployments (download to the old
   engine's close) against the steady median, each means of preparing the model quiet and
   beside a CPU hog, and a control window without a deployment (see ``agent.dev.bench_deploy``).
9. tools: INT8 Q/DQ variants and the exact graph rewrites against FP32 on the
   CPU (frames/s ratio and agreement), and magnitude pruning against the dense
   model (see ``agent.dev.bench_tools``).

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.core import DeploySection, SourceSection
from agent.dev.base import FpsOf, Report, TimedObserver
from agent.dev.bench_cameras import CAMERA_COUNTS, bench_cameras, bench_rtsp_recovery
from agent.dev.bench_deploy import DEPLOY_GAP_DEPLOYS, MEANS, bench_deploy_gap
from agent.dev.bench_liveview import bench_liveview
from agent.dev.bench_rig import NO_PROBATION, demo_rig
from agent.dev.bench_shadow import SHADOW_ROUNDS, SHADOW_S, bench_shadow
from agent.dev.bench_stages import bench_second_stage
from agent.dev.bench_tools import bench_tools
from agent.models import DeployRequest, EngineOptions, ModelStore, load_serving
from agent.monitor import LatencyRecorder, rss_bytes
from agent.runtime import EngineSlot, OnnxRuntimeEngine
from agent.vision import FrameResult, FrameSource, Pipeline, Preprocessor

__all__ = [
    "BENCHES", "DEPLOY_GAP_DEPLOYS", "MEANS", "bench_pipeline", "bench_results", "bench_swaps", "demo_fps", "run_bench",
]

THREADS = 2
WARMUP_FRAMES = 10
CLOSE_TIMEOUT_S = 60.0
"""Bound on the results publisher's flush after a round (it has at most its hand-over queue to encode)."""



def bare_fps(model: Path, tensor: np.ndarray, frames: int, threads: int) -> float:
    engine = OnnxRuntimeEngine.load(model, threads=threads)
    name = engine.inputs[0].name
    for _ in range(WARMUP_FRAMES):
        engine.infer({name: tensor})
    start = time.perf_counter()
    for _ in range(frames):
        engine.infer({name: tensor})
    elapsed = time.perf_counter() - start
    engine.close()
    return frames / elapsed


def _source(video: Path) -> FrameSource:
    return FrameSource(SourceSection(uri=str(video), loop=True, pace="none", name="bench"))


def _monitors(serving: Any) -> list[Any]:
    """The agent's per-frame monitors (drift and bias), set up as the daemon does."""
    from agent.core import MonitorSection
    from agent.monitor import BiasMonitor, DriftMonitor
    from agent.vision import Monitors

    section = MonitorSection()
    drift = DriftMonitor(section, serving.manifest.reference, serving.version)
    bias = BiasMonitor(section, serving.manifest.slices)
    return [Monitors([drift, bias])]


def pipeline_fps(store: ModelStore, video: Path, frames: int, threads: int,
                 fuse: bool, monitors: bool = False,
                 extra: list[Any] | None = None) -> tuple[float, LatencyRecorder]:
    slot = EngineSlot()
    slot.swap(load_serving(store.current("text-det"), EngineOptions(threads=threads, fuse_preprocessing=fuse)))
    recorder = LatencyRecorder(window=frames)
    source = _source(video)
    observers = (_monitors(slot.serving) if monitors else []) + (extra or [])
    pipeline = Pipeline(source, slot, recorder, observers=observers)
    source.start()
    for _ in range(WARMUP_FRAMES):
        frame = source.get(10.0)
        if frame is not None:
            pipeline.process(frame)
    recorder = pipeline.recorder = LatencyRecorder(window=frames)
    done = pipeline.counters.frames_processed + frames
    start = time.perf_counter()
    pipeline.start()
    while pipeline.counters.frames_processed < done:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    pipeline.stop(10.0)
    source.stop()
    slot.clear()
    return (pipeline.counters.frames_processed - done + frames) / elapsed, recorder


def demo_fps(store: ModelStore, demo: Path, frames: int) -> FpsOf:
    """``fps_of(observers)`` of the second-stage and live-view benches: ``pipeline_fps`` of the store's
    text-det on the demo video, preprocessing fused, over ``frames`` frames."""
    return lambda extra: pipeline_fps(store, demo / "video.mp4", frames, THREADS, fuse=True, extra=extra)[0]


def bench_pipeline(demo: Path, store: ModelStore, frames: int, rounds: int, report: Report) -> None:
    import cv2

    installed = store.current("text-det")
    capture = cv2.VideoCapture(str(demo / "video.mp4"))
    _, image = capture.read()
    capture.release()
    engine = OnnxRuntimeEngine.load(installed.model_path, threads=THREADS)
    tensor, _ = Preprocessor(installed.manifest.preprocess, engine.inputs[0]).prep(image)
    engine.close()
    report(f"\n== pipeline vs bare ONNX Runtime ({installed.manifest.name} {installed.manifest.version}, "
           f"{THREADS} threads, {frames} frames x {rounds} rounds, 640x480) ==")
    bare, piped, unfused, monitored = [], [], [], []
    recorder = None
    video = demo / "video.mp4"
    for i in range(rounds):
        bare.append(bare_fps(installed.model_path, tensor, frames, THREADS))
        fps, recorder = pipeline_fps(store, video, frames, THREADS, fuse=True)
        piped.append(fps)
        monitored.append(pipeline_fps(store, video, frames, THREADS, fuse=True, monitors=True)[0])
        unfused.append(pipeline_fps(store, video, frames, THREADS, fuse=False)[0])
        report(f"round {i + 1}: bare {bare[-1]:.2f} fps | pipeline {piped[-1]:.2f} | with monitors "
               f"{monitored[-1]:.2f} | without fused preprocessing {unfused[-1]:.2f}")
    b, p, u = statistics.median(bare), statistics.median(piped), statistics.median(unfused)
    m = statistics.median(monitored)
    report(f"bare loop            {b:7.2f} fps (median)")
    report(f"agent pipeline       {p:7.2f} fps  ratio {p / b:.3f}  (goal >= 0.95)")
    report(f"  unfused preprocess {u:7.2f} fps  ratio {u / b:.3f}  (for comparison)")
    report(f"monitors on          {m:7.2f} fps  ratio to monitors off {m / p:.3f}  (goal >= 0.98)")
    if recorder is not None:
        snap = recorder.snapshot()
        for stage, s in snap.stages.items():
            report(f"  {stage:<13} p50 {s.p50_ms:8.2f} ms   p99 {s.p99_ms:8.2f} ms")
    from agent.dev.monitor_cost import measure_monitor_cost

    cost = measure_monitor_cost(video, installed.path, frames=min(frames * 2, 300))
    report("monitors' own cost: " + "; ".join(cost.lines()))


class _TakingSession:
    """The broker session's place for the results bench: takes every message at once (no network),
    so what is measured is the agent's own work: tracking, zones, events, payloads, encoding."""

    async def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> None:
        return None

    async def publish_now(self, topic: str, data: bytes, qos: int = 0) -> bool:
        return True


def _results_settings(width: int, height: int) -> Any:
    """Every frame published, a zone on the left half and a line down the middle: all of it runs."""
    from agent.core import LineSettings, RateSettings, ResultsSettings, ZoneSettings

    half = width / 2
    return ResultsSettings(
        rate=RateSettings(mode="every_frame"),
        zones=(ZoneSettings(name="left", polygon=((0.0, 0.0), (half, 0.0), (half, height), (0.0, height))),),
        lines=(LineSettings(name="middle", start=(half, 0.0), end=(half, float(height))),))


def results_fps(store: ModelStore, video: Path, frames: int, state_dir: Path) -> dict[str, float]:
    """Pipeline frames/s with the results publisher observing, and its costs per frame."""
    import threading

    from agent.monitor import Telemetry
    from agent.results import ResultsPublisher
    from agent.wire import Topics

    topics = Topics("edge", "bench")
    telemetry = Telemetry(topics, "bench", "bench")
    telemetry.attach(_TakingSession())
    settings = _results_settings(640, 480)
    publisher = ResultsPublisher(telemetry, topics, lambda camera: settings, state_dir)
    timed = TimedObserver(publisher.observe)
    loop = asyncio.new_event_loop()
    cpu: list[float] = []

    def publishing() -> None:
        began = time.thread_time()
        loop.run_forever()
        cpu.append(time.thread_time() - began)

    thread = threading.Thread(target=publishing, name="results-bench", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(publisher.run(), loop)
    fps, _ = pipeline_fps(store, video, frames, THREADS, fuse=True, extra=[timed])
    asyncio.run_coroutine_threadsafe(publisher.close(), loop).result(CLOSE_TIMEOUT_S)
    running.result(CLOSE_TIMEOUT_S)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(CLOSE_TIMEOUT_S)
    loop.close()
    calls = max(timed.calls, 1)
    return {"fps": fps, "observe_us": timed.seconds / calls * 1e6,
            "publish_us": (cpu[0] if cpu else 0.0) / calls * 1e6,
            "published": publisher.published, "events": publisher.events, "counts": publisher.counts,
            "failures": publisher.failures.count, "handoff_dropped": publisher.handoff_dropped}


def bench_results(demo: Path, store: ModelStore, frames: int, rounds: int, report: Report) -> None:
    installed = store.current("text-det")
    report(f"\n== results, tracking and events on vs off ({installed.manifest.name} {installed.manifest.version}, "
           f"{THREADS} threads, {frames} frames x {rounds} rounds, every frame published, 1 zone, 1 line) ==")
    video = demo / "video.mp4"
    off, on = [], []
    costs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            off.append(pipeline_fps(store, video, frames, THREADS, fuse=True)[0])
            costs.append(results_fps(store, video, frames, Path(tmp)))
            on.append(costs[-1]["fps"])
            c = costs[-1]
            report(f"round {i + 1}: off {off[-1]:.2f} fps | on {on[-1]:.2f} fps | observer "
                   f"{c['observe_us']:.0f} us/frame | publishing {c['publish_us']:.0f} us/frame"
                   f" | results {c['published']:.0f}, events "
                   f"{c['events']:.0f}, counts {c['counts']:.0f}, failures {c['failures']:.0f}, "
                   f"handoff dropped {c['handoff_dropped']:.0f}")
    f_off, f_on = statistics.median(off), statistics.median(on)
    report(f"results off          {f_off:7.2f} fps (median)")
    report(f"results on           {f_on:7.2f} fps  ratio {f_on / f_off:.3f}  (goal >= 0.98)")
    report(f"observer (frame thread: tracking, zones, lines, hand-over) "
           f"{statistics.median(c['observe_us'] for c in costs):.0f} us/frame (median of rounds)")
    report(f"publishing (asyncio side: payloads built and encoded, CPU of its thread) "
           f"{statistics.median(c['publish_us'] for c in costs):.0f} us/frame (median of rounds)")


class GapRecorder:
    """Observer: the time and engine version of every processed frame."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.versions: list[str] = []
        self.indices: list[int] = []

    def __call__(self, result: FrameResult) -> None:
        self.times.append(time.perf_counter())
        self.versions.append(result.version)
        self.indices.append(result.frame.index)


async def _swaps(demo: Path, root: Path, swaps: int, report: Report) -> dict[str, Any]:
    rig = demo_rig(demo, root, THREADS)
    source = _source(demo / "video.mp4")
    gaps = GapRecorder()
    pipeline = Pipeline(source, rig.slot, LatencyRecorder(600), observers=[gaps])
    settings = DeploySection(allowed_schemes=("file",), file_roots=(root,), latency_budget_ms=5000.0)
    swap_spans: list[tuple[float, float]] = []
    manager = rig.manager(pipeline, settings)
    source.start()
    pipeline.start()
    while not pipeline.first_frame.is_set():
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    rss: list[int] = []
    for i in range(swaps):
        version = "v6" if i % 2 == 0 else "v4"
        path, digest = rig.bundles[version]
        began = time.perf_counter()
        await manager.deploy(DeployRequest(
            name="text-det", version=version, url=path.as_uri(), sha256=digest, format="bundle",
            probation=NO_PROBATION, deployment_id=f"bench-{i}"))
        swap_spans.append((began, time.perf_counter()))
        await asyncio.sleep(0.3)
        rss.append(rss_bytes())
        if (i + 1) % 10 == 0:
            report(f"  {i + 1}/{swaps} swaps, RSS {rss[-1] / 1e6:.1f} MB")
    await asyncio.sleep(0.5)
    pipeline.stop(10.0)
    source.stop()
    manager.close()
    rig.slot.clear()
    return {"gaps": gaps, "spans": swap_spans, "rss": rss, "dropped": source.stats().frames_dropped}


def _theil_sen(values: list[float]) -> float:
    slopes = [(values[j] - values[i]) / (j - i) for i in range(len(values)) for j in range(i + 1, len(values))]
    return statistics.median(slopes) if slopes else 0.0


def bench_swaps(demo: Path, swaps: int, report: Report) -> None:
    report(f"\n== hot swap: {swaps} swaps between text-det v4 and v6 at full rate (pace=none) ==")
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(_swaps(demo, Path(tmp), swaps, report))
    gaps: GapRecorder = out["gaps"]
    times = np.array(gaps.times)
    deltas = np.diff(times)
    versions = gaps.versions
    medians = {v: float(np.median([d for d, ver in zip(deltas, versions[1:], strict=False) if ver == v]))
               for v in set(versions)}
    skipped = int(sum(b - a - 1 for a, b in zip(gaps.indices, gaps.indices[1:], strict=False) if b > a + 1))
    worst_switch, worst_window = 0.0, 0.0
    for k in range(1, len(versions)):
        if versions[k] != versions[k - 1]:
            ref = max(medians[versions[k]], medians[versions[k - 1]])
            worst_switch = max(worst_switch, deltas[k - 1] / ref)
    for began, ended in out["spans"]:
        inside = [(d, versions[k + 1]) for k, d in enumerate(deltas) if began <= times[k + 1] <= ended + 0.2]
        for d, v in inside:
            worst_window = max(worst_window, d / medians[v])
    rss = out["rss"]
    report(f"frames processed {len(times)}, frames skipped across swaps {skipped}, "
           f"source overwrites {out['dropped']} (goal 0)")
    report("median gap: " + ", ".join(f"{v} {m * 1000:.1f} ms" for v, m in sorted(medians.items())))
    report(f"largest gap at a swap / median gap of the slower model: {worst_switch:.2f} (goal <= 2)")
    report(f"largest gap while a new model loads and warms / median gap: {worst_window:.2f}")
    if rss:
        report(f"RSS after first swap {rss[0] / 1e6:.1f} MB, after {len(rss)} swaps {rss[-1] / 1e6:.1f} MB, "
               f"growth {(rss[-1] - rss[0]) / 1e6:.1f} MB (goal < 10 MB); "
               "Theil-Sen slope over the last half "
               f"{_theil_sen([r / 1e6 for r in rss[len(rss) // 2:]]) * 1000:.1f} kB/swap")


BENCHES = ("pipeline", "swap", "cameras", "results", "shadow", "stages", "liveview", "deploy-gap", "tools")
"""The parts of ``make bench``, in the order they run (``only`` picks one)."""


def run_bench(demo: Path, report: Report, *, frames: int, rounds: int, swaps: int, only: str | None = None,
              camera_frames: int, cameras: tuple[int, ...] = CAMERA_COUNTS, shadow_rounds: int = SHADOW_ROUNDS,
              shadow_s: float = SHADOW_S, deploys: int = DEPLOY_GAP_DEPLOYS,
              means: tuple[str, ...] = tuple(MEANS), camera_fps: float | None = None) -> None:
    """Run every bench (or only ``only``) on the demo folder; each line of figures goes to ``report``."""
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "engines")
        store.install(demo / "models" / "text-det-v4")
        if only in (None, "pipeline"):
            bench_pipeline(demo, store, frames, rounds, report)
        if only in (None, "results"):
            bench_results(demo, store, frames, rounds, report)
        fps_of = demo_fps(store, demo, frames)
        if only in (None, "stages"):
            bench_second_stage(store, demo, frames, rounds, fps_of, Path(tmp) / "state", report)
        if only in (None, "liveview"):
            bench_liveview(demo, store, frames, rounds, fps_of, report)
        if only in (None, "cameras"):
            bench_cameras(demo, store, camera_frames, THREADS, cameras, report=report)
            bench_rtsp_recovery(demo, report=report)
    if only in (None, "swap"):
        bench_swaps(demo, swaps, report)
    if only in (None, "shadow"):
        bench_shadow(demo, report, rounds=shadow_rounds, seconds=shadow_s)
    if only in (None, "deploy-gap"):
        bench_deploy_gap(demo, report, deploys=deploys, means=means, camera_fps=camera_fps)
    if only in (None, "tools"):
        bench_tools(demo, report)
