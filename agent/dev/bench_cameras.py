"""``make bench``'s cameras run: 1, 2, 4, 8 cameras on the demo video (``pace = none``) on one engine.

For each count, unbatched (fused preprocessing: input ``[1, H, W, 3]`` uint8) and
batched (unfused: dynamic batch, up to one frame per camera in one inference):

- aggregate frames/s of the real pipeline (capture threads, scheduler, preprocess,
  inference, head) against a bare engine loop at the same batch size on pre-made
  input tensors, measured just before and just after the pipeline and averaged, so
  that machine noise hits both (goal >= 0.95);
- fairness: the slowest camera's inferred frames/s over the fastest's (goal >= 0.9);
- RTSP recovery: a real RTSP server (gst-rtsp-server) serving the demo video is stopped
  for a few seconds and started again; seconds from its return to the first frame and
  to full rate (goal <= 5 s; ``agent.dev.rtsp_bench``).

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from agent.core import CameraSection
from agent.dev.base import DevError, Report
from agent.dev.rtsp_bench import RtspServerError, measure_rtsp_recovery, rtsp_server_unavailable
from agent.models import EngineOptions, ModelStore, load_serving
from agent.monitor import LatencyRecorder
from agent.runtime import EngineSlot
from agent.vision import MAX_BATCH_FRAMES, CameraSet, FrameResult, Pipeline, Preprocessor, Scheduler

__all__ = ["CAMERA_COUNTS", "bench_cameras"]

CAMERA_COUNTS = (1, 2, 4, 8)
WARMUP_S = 1.0
"""Run before counting: sessions allocate their arenas and the capture threads open their files."""
POLL_S = 0.01
BARE_WARMUP_RUNS = 5
"""Inferences before the bare loop is timed: a new session's first runs grow its memory arena."""
MIN_BARE_FRAMES = 32
"""The bare loop times at least this many frames, so that a small run is not a handful of calls."""



def _bare_fps(store: ModelStore, options: EngineOptions, image: np.ndarray, batch: int, frames: int) -> float:
    """Frames/s of ``engine.infer`` alone on one frame's tensor, ``batch`` copies stacked."""
    serving = load_serving(store.current("text-det"), options)
    engine = serving.engine
    tensor, _ = Preprocessor(serving.manifest.preprocess, engine.inputs[0]).prep(image)
    feeds = {engine.inputs[0].name: np.concatenate([tensor] * batch) if batch > 1 else tensor}
    for _ in range(BARE_WARMUP_RUNS):
        engine.infer(feeds)
    runs = max(1, max(frames, MIN_BARE_FRAMES) // batch)
    start = time.perf_counter()
    for _ in range(runs):
        engine.infer(feeds)
    elapsed = time.perf_counter() - start
    engine.close()
    return runs * batch / elapsed


def _pipeline_fps(store: ModelStore, options: EngineOptions, video: Path, cameras: int,
                  frames: int) -> tuple[float, float, float]:
    """Aggregate frames/s, min/max camera frames/s, mean batch size."""
    slot = EngineSlot()
    slot.swap(load_serving(store.current("text-det"), options))
    camera_set = CameraSet([CameraSection(name=f"cam{i}", uri=str(video), pace="none", loop=True)
                            for i in range(cameras)], "text-det")
    counts: Counter[str] = Counter()
    batches: list[int] = []

    def seen(result: FrameResult) -> None:
        counts[result.camera] += 1
        batches.append(result.batch)

    pipeline = Pipeline(Scheduler(camera_set), slot, LatencyRecorder(max(16, frames)), observers=[seen])
    camera_set.start()
    pipeline.start()
    time.sleep(WARMUP_S)
    counts.clear()
    batches.clear()
    start = time.perf_counter()
    while sum(counts.values()) < frames:
        time.sleep(POLL_S)
    elapsed = time.perf_counter() - start
    snapshot = dict(counts)
    mean_batch = statistics.fmean(batches) if batches else 0.0
    pipeline.stop(10.0)
    camera_set.stop()
    slot.clear()
    per_camera = [snapshot.get(f"cam{i}", 0) / elapsed for i in range(cameras)]
    return sum(snapshot.values()) / elapsed, min(per_camera) / max(per_camera), mean_batch


def bench_cameras(demo: Path, store: ModelStore, frames_per_camera: int, threads: int,
                  counts: tuple[int, ...] = CAMERA_COUNTS, *, report: Report) -> None:
    """Pipeline against bare engine frames/s for each camera count, unbatched then batched, to ``report``."""
    video = demo / "video.mp4"
    capture = cv2.VideoCapture(str(video))
    ok, image = capture.read()
    capture.release()
    if not ok:
        raise DevError(f"cannot read a frame of {video}")
    report(f"\n== cameras on one engine (text-det v4, {threads} threads, {frames_per_camera} frames a camera, "
           "pace=none) ==")
    report("cameras  mode       pipeline fps  bare fps  ratio  (goal >= 0.95)  fairness min/max  (goal >= 0.9)"
           "  mean batch")
    for batched in (False, True):
        options = EngineOptions(threads=threads, fuse_preprocessing=not batched)
        for cameras in counts:
            frames = frames_per_camera * cameras
            batch = min(cameras, MAX_BATCH_FRAMES) if batched else 1
            before = _bare_fps(store, options, image, batch, frames)
            fps, fairness, mean_batch = _pipeline_fps(store, options, video, cameras, frames)
            bare = statistics.fmean((before, _bare_fps(store, options, image, batch, frames)))
            mode = "batched" if batched else "unbatched"
            report(f"{cameras:>7}  {mode:<9}  {fps:12.2f}  {bare:8.2f}  {fps / bare:5.3f}  "
                   f"{'':14}  {fairness:16.3f}  {'':13}  {mean_batch:10.2f}")


RTSP_OUTAGE_S = 3.0
"""How long the bench's RTSP server stays away: longer than one reopen, shorter than a stall."""


def bench_rtsp_recovery(demo: Path, *, report: Report) -> None:
    """The RTSP recovery figures of ``measure_rtsp_recovery``, or why they could not be measured."""
    report(f"\n== RTSP recovery (server away {RTSP_OUTAGE_S:.0f} s, agent defaults; goal <= 5 s) ==")
    missing = rtsp_server_unavailable()
    if missing is not None:
        report(f"skipped: {missing}")
        return
    try:
        result = measure_rtsp_recovery(demo / "video.mp4", outage_s=RTSP_OUTAGE_S)
    except RtspServerError as exc:
        report(f"not measured: {exc}")
        return
    full = "never within the watch" if result.full_rate_s is None else f"{result.full_rate_s:.2f} s"
    report(f"first frame after the server's return {result.first_frame_s:.2f} s, full rate {full}, "
           f"reconnecting seen {result.reconnecting_seen}, reopens {result.reopens}")
