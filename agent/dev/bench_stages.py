"""``make bench``'s second stage run: the pipeline's frames/s with the results publisher reading each
published frame's text boxes with the recognizer (``results.second_stage = "text-rec"``) against the
same publisher without a second stage, and the recognizer's cost per crop.

In each round, alternating so that machine noise hits both: the pipeline on the demo video
(``pace = none``) with the agent's ``ResultsPublisher`` as its frame observer (the default
rate, 5 results a second; tracking on), first without, then with its ``SecondStages``
serving ``text-rec`` from the store. Reported: frames/s of both and their ratio; the frames
and crops read, and the recognizer's wall time per crop and per read frame (its reads timed
on the frame thread). On a CPU the recognizer, not the detector, sets a text camera's rate
on the frames it reads (docs/results.md).

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from agent.core import RateSettings, ResultsSettings
from agent.dev.base import DevError, FpsOf, Report
from agent.models import EngineOptions, ModelStore
from agent.monitor import Telemetry
from agent.results import ResultsPublisher, SecondStages, StageReading, second_stage_options
from agent.wire import Topics

__all__ = ["STAGE", "bench_second_stage"]

STAGE = "text-rec"
"""The demo's recognizer (``make setup`` extracts it from the rapidocr wheel)."""
THREADS = 2
"""ORT threads of the recognizer, as the bench's detector."""
CLOSE_TIMEOUT_S = 60.0
"""Bound on the publisher's flush after a round."""


class _TakingSession:
    """Takes every message at once (no network): what is measured is the agent's own work."""

    async def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> None:
        return None

    async def publish_now(self, topic: str, data: bytes, qos: int = 0) -> bool:
        return True


class _TimedStages(SecondStages):
    """The agent's second stages, their reads timed on the frame thread."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def read(self, name: str, camera: str, image: Any, detections: Any, counted: bool = True) -> StageReading | None:
        began = time.perf_counter()
        try:
            return super().read(name, camera, image, detections, counted)
        finally:
            self.seconds += time.perf_counter() - began


def _published(fps_of: FpsOf, state_dir: Path, stages: SecondStages | None) -> float:
    """Frames/s with the results publisher observing (its asyncio side on a loop of its own)."""
    topics = Topics("edge", "bench")
    telemetry = Telemetry(topics, "bench", "bench")
    telemetry.attach(_TakingSession())
    settings = ResultsSettings(rate=RateSettings(), second_stage=STAGE if stages is not None else None)
    publisher = ResultsPublisher(telemetry, topics, lambda camera: settings, state_dir, second_stages=stages)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="stages-bench", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(publisher.run(), loop)
    try:
        fps = fps_of([publisher.observe])
    finally:
        asyncio.run_coroutine_threadsafe(publisher.close(), loop).result(CLOSE_TIMEOUT_S)
        running.result(CLOSE_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_TIMEOUT_S)
        loop.close()
    if publisher.failures.count:
        raise DevError(f"second stage bench: {publisher.failures.count} frames' results failed")
    return fps


def bench_second_stage(store: ModelStore, demo: Path, frames: int, rounds: int, fps_of: FpsOf, state_dir: Path,
                       report: Report) -> None:
    """Results with the recognizer on each published frame against without, ``rounds`` alternating rounds."""
    folder = demo / "models" / f"{STAGE}-v4"
    if not (folder / "manifest.json").is_file():
        report(f"\n== second stage: skipped ({folder} missing: run `make setup`) ==")
        return
    store.install(folder)
    report(f"\n== second stage ({STAGE} v4 on each published frame's text boxes, {THREADS} threads) vs none "
           f"({frames} frames x {rounds} rounds, results at 5 a second) ==")
    without: list[float] = []
    with_stage: list[float] = []
    per_crop: list[float] = []
    per_frame: list[float] = []
    for i in range(rounds):
        without.append(_published(fps_of, state_dir, None))
        stages = _TimedStages()
        stages.load(store, [STAGE], second_stage_options(EngineOptions(threads=THREADS)))
        if not stages.slots:
            raise DevError(f"second stage bench: {STAGE} did not load (see second_stage_unavailable)")
        try:
            with_stage.append(_published(fps_of, state_dir, stages))
        finally:
            stages.close()
        per_crop.append(stages.seconds / max(stages.crops, 1) * 1000)
        per_frame.append(stages.seconds / max(stages.frames, 1) * 1000)
        report(f"round {i + 1}: without {without[-1]:.2f} fps | with {with_stage[-1]:.2f} fps | read "
               f"{stages.frames} frames, {stages.crops} crops, {per_crop[-1]:.1f} ms/crop, "
               f"{per_frame[-1]:.0f} ms/frame, failures {stages.failures.count}")
    f_without, f_with = statistics.median(without), statistics.median(with_stage)
    report(f"results without      {f_without:7.2f} fps (median)")
    report(f"results with {STAGE}  {f_with:7.2f} fps  ratio {f_with / f_without:.3f}")
    report(f"recognizer           {statistics.median(per_crop):7.1f} ms per crop, "
           f"{statistics.median(per_frame):.0f} ms per read frame (median of rounds)")
