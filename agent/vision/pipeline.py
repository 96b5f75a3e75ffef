"""capture -> preprocess -> infer -> postprocess, on one worker thread; latest frame wins.

The capture thread (agent.vision.sources) decodes ahead while this worker infers,
so decoding overlaps inference. When the serving model has its normalisation
fused into the graph (agent.models.graph), preprocessing is a zero-copy hand-over
of the uint8 frame. The asyncio loop never waits on a frame: it reads counters and
the latency recorder, and observers get a small result record per frame.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from ..monitor.features import FailureCount
from ..monitor.latency import LatencyRecorder
from ..runtime.slot import EngineSlot, Serving, SlotEmptyError
from .sources import Frame, FrameSource
from .transforms import Prediction, Preprocessor, make_head

__all__ = ["FrameResult", "Pipeline", "PipelineCounters"]

log = structlog.get_logger(__name__)

GET_TIMEOUT_S = 0.5
"""How long the worker waits for a frame before checking whether it should stop."""


@dataclass(frozen=True)
class FrameResult:
    """What the monitors learn about one processed frame."""

    frame: Frame
    model: str
    version: str
    timings_ms: dict[str, float]
    prediction: Prediction | None
    finite: bool
    error: str | None = None


Observer = Callable[[FrameResult], None]


VERSION_LATENCY_WINDOW = 256
"""Inference times kept per model version, for probation's latency comparison."""


@dataclass
class PipelineCounters:
    frames_processed: int = 0
    errors: int = 0
    nonfinite: int = 0
    by_version: dict[str, dict[str, int]] = field(default_factory=dict)
    infer_ms: dict[str, deque[float]] = field(default_factory=dict)

    def count(self, version: str, key: str) -> None:
        per = self.by_version.setdefault(version, {"frames": 0, "errors": 0, "nonfinite": 0})
        per[key] += 1

    def record_infer(self, version: str, ms: float) -> None:
        window = self.infer_ms.get(version)
        if window is None:
            window = self.infer_ms[version] = deque(maxlen=VERSION_LATENCY_WINDOW)
        window.append(ms)

    def stats(self, version: str) -> dict[str, Any]:
        """Frames, errors, non-finite outputs and inference p95 of one model version."""
        per = dict(self.by_version.get(version, {"frames": 0, "errors": 0, "nonfinite": 0}))
        times = list(self.infer_ms.get(version, ()))
        per["p95_ms"] = round(float(np.percentile(times, 95)), 3) if times else None
        return per


class _Prepared:
    """The serving model's preprocessor and head, built once per swap."""

    def __init__(self, serving: Serving) -> None:
        manifest = serving.manifest
        engine = serving.engine
        wanted = manifest.preprocess.input_name or engine.inputs[0].name
        spec = next((i for i in engine.inputs if i.name == wanted), None)
        if spec is None:
            raise ValueError(f"model has no input named {wanted!r}")
        self.serving = serving
        self.input_name = spec.name
        self.preprocessor = Preprocessor(manifest.preprocess, spec)
        self.head = make_head(manifest.head)


def all_finite(outputs: dict[str, np.ndarray]) -> bool:
    """True when no output holds NaN or infinity (one float64 sum per output)."""
    for value in outputs.values():
        if value.dtype.kind == "f" and not math.isfinite(float(value.sum(dtype=np.float64))):
            return False
    return True


class Pipeline:
    def __init__(
        self,
        source: FrameSource,
        slot: EngineSlot,
        recorder: LatencyRecorder,
        observers: list[Observer] | None = None,
    ) -> None:
        self.source = source
        self.slot = slot
        self.recorder = recorder
        self.observers: list[Observer] = list(observers or [])
        self.counters = PipelineCounters()
        self.first_frame = threading.Event()
        self.last_progress = time.monotonic()
        """When the last frame was processed."""
        self.last_heartbeat = time.monotonic()
        """When the worker loop last went round, with or without a frame (the watchdog's signal)."""
        self.last_result: FrameResult | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepared: _Prepared | None = None
        self.observer_failures = FailureCount("observer_failed")
        """Observers that raised on a frame: counted and logged, inference goes on."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="frame-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Let the frame in flight finish, then stop; True when the worker ended in time."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_heartbeat = time.monotonic()
            waited = time.perf_counter()
            frame = self.source.get(GET_TIMEOUT_S)
            if frame is None:
                continue
            wait_ms = (time.perf_counter() - waited) * 1000.0
            try:
                result = self.process(frame, wait_ms)
            except SlotEmptyError:
                continue
            self.last_result = result
            for observer in self.observers:
                try:
                    observer(result)
                except Exception as exc:  # a broken monitor must not stop inference
                    self.observer_failures.failed(observer, exc)

    def _prepare(self, serving: Serving) -> _Prepared:
        prepared = self._prepared
        if prepared is None or prepared.serving is not serving:
            prepared = self._prepared = _Prepared(serving)
        return prepared

    def process(self, frame: Frame, wait_ms: float = 0.0) -> FrameResult:
        """Run one frame through the serving model; never raises for a model failure."""
        with self.slot.lease() as serving:
            t0 = time.perf_counter()
            prediction: Prediction | None = None
            finite = True
            error: str | None = None
            t1 = t2 = t0
            try:
                prepared = self._prepare(serving)
                tensor, geometry = prepared.preprocessor.prep(frame.image)
                t1 = time.perf_counter()
                outputs = serving.engine.infer({prepared.input_name: tensor})
                t2 = time.perf_counter()
                finite = all_finite(outputs)
                if finite:
                    prediction = prepared.head(outputs, geometry)
            except Exception as exc:  # the model misbehaved: count it, keep serving
                error = f"{type(exc).__name__}: {exc}"
            t3 = time.perf_counter()
            name, version = serving.name, serving.version
        self._count(version, error, finite)
        timings = {
            "capture_wait": wait_ms,
            "preprocess": (t1 - t0) * 1000.0,
            "infer": (t2 - t1) * 1000.0,
            "postprocess": (t3 - t2) * 1000.0,
            "end_to_end": (time.monotonic() - frame.captured_at) * 1000.0,
        }
        if error is None:
            self.recorder.record(timings)
            self.counters.record_infer(version, timings["infer"])
        self.last_progress = time.monotonic()
        self.first_frame.set()
        if error is not None:
            log.warning("frame_failed", model=name, version=version, frame=frame.index, error=error)
        return FrameResult(frame, name, version, timings, prediction, finite, error)

    def _count(self, version: str, error: str | None, finite: bool) -> None:
        counters = self.counters
        counters.frames_processed += 1
        counters.count(version, "frames")
        if error is not None:
            counters.errors += 1
            counters.count(version, "errors")
        elif not finite:
            counters.nonfinite += 1
            counters.count(version, "nonfinite")

    def feeds_for(self, serving: Serving) -> dict[str, np.ndarray]:
        """Inputs for ``serving`` made from the newest real frame (to warm a model up before a swap)."""
        result = self.last_result
        if result is None:
            raise RuntimeError("no frame has been processed yet to warm the model up with")
        prepared = _Prepared(serving)
        tensor, _ = prepared.preprocessor.prep(result.frame.image)
        return {prepared.input_name: tensor}

    def info(self) -> dict[str, Any]:
        serving = self.slot.serving
        return {
            "frames_processed": self.counters.frames_processed,
            "errors": self.counters.errors,
            "model": None if serving is None else serving.name,
            "version": None if serving is None else serving.version,
        }
