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

from agent.monitor import CameraRecorders, FailureCount, LatencyRecorder
from agent.runtime import EngineSlot, Serving, SlotEmptyError
from agent.vision.errors import VisionError
from agent.vision.preprocess import Geometry
from agent.vision.scheduler import Scheduler
from agent.vision.sources import Frame, FrameSource
from agent.vision.transforms import Prediction, Preprocessor, make_head

__all__ = ["FrameResult", "Pipeline", "PipelineCounters"]

log = structlog.get_logger(__name__)

GET_TIMEOUT_S = 0.5
"""How long the worker waits for a frame before checking whether it should stop."""
MAX_BATCH_FRAMES = 8
"""Most frames (of as many cameras) in one inference of a model with a dynamic batch dimension:
beyond it a CPU gains nothing and the input tensor's memory keeps growing; a TensorRT engine's
optimization profile may set a lower bound."""


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
    batch: int = 1
    """How many frames (of different cameras) went through the engine in the same inference."""

    @property
    def camera(self) -> str:
        """The name of the camera the frame came from."""
        return self.frame.source


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
        per: dict[str, Any] = dict(self.by_version.get(version, {"frames": 0, "errors": 0, "nonfinite": 0}))
        times = list(self.infer_ms.get(version, ()))
        per["p95_ms"] = round(float(np.percentile(times, 95)), 3) if times else None
        return per


_Run = tuple[dict[str, float], Prediction | None, bool, str | None, int]
"""One frame's stage timings, prediction, finiteness, error and batch size."""


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
        self.max_batch = batch_limit(engine, spec.name, spec.shape)


def batch_limit(engine: Any, input_name: str, shape: tuple[int | None, ...]) -> int:
    """How many frames one inference may take: 1 for a fixed batch dimension, else up to
    MAX_BATCH_FRAMES (and within a TensorRT optimization profile's max)."""
    if not shape or shape[0] is not None:
        return 1
    profile = getattr(engine, "profiles", {}).get(input_name)
    high = profile.max[0] if profile is not None else MAX_BATCH_FRAMES
    return max(1, min(MAX_BATCH_FRAMES, high))


def split_outputs(outputs: dict[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """One batch's outputs as ``count`` batch-1 output sets (an output without the batch
    dimension is handed whole to every frame)."""
    if count == 1:
        return [outputs]
    return [{k: v[i : i + 1] if v.ndim and v.shape[0] == count else v for k, v in outputs.items()}
            for i in range(count)]


def all_finite(outputs: dict[str, np.ndarray]) -> bool:
    """True when no output holds NaN or infinity (one float64 sum per output)."""
    for value in outputs.values():
        if value.dtype.kind == "f" and not math.isfinite(float(value.sum(dtype=np.float64))):
            return False
    return True


class _OneSource:
    """A single FrameSource seen as a scheduler of one camera."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source

    def next_batch(self, limit: int, timeout: float) -> list[Frame]:
        frame = self.source.get(timeout)
        return [] if frame is None else [frame]


class Pipeline:
    """The frame worker: batches from the scheduler through the serving engine to the observers.

    Given the frames (a scheduler over the cameras, a single source, or None when the caller
    hands each frame to ``process`` itself, as the offline tools do, with no worker to
    ``start``), the engine slot it leases the serving model from for each batch, and the
    latency recorder; observers (the monitors, the results publisher, the live view) are
    appended to ``observers``. It owns the per-camera latency recorders, the frame counters
    (per model version too, for probation), the newest result (``last_result``, which also
    warms a candidate model up), the ``first_frame`` event and the ``last_heartbeat`` the
    watchdog reads, and one ``frame-worker`` thread (``start``/``stop``). An observer that
    raises is counted and logged; inference goes on.
    """

    def __init__(
        self,
        source: FrameSource | Scheduler | None,
        slot: EngineSlot,
        recorder: LatencyRecorder,
        observers: list[Observer] | None = None,
    ) -> None:
        self.source = source
        self.frames: Scheduler | _OneSource | None = (
            None if source is None else source if isinstance(source, Scheduler) else _OneSource(source))
        self.slot = slot
        self.recorder = recorder
        self.cameras = CameraRecorders(recorder.window)
        """Latency and errors per camera, for telemetry's ``cameras`` list."""
        self.observers: list[Observer] = list(observers or [])
        self.counters = PipelineCounters()
        self.first_frame = threading.Event()
        self.last_heartbeat = time.monotonic()
        """When the worker loop last went round, with or without a frame (the watchdog's signal)."""
        self.last_result: FrameResult | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepared: _Prepared | None = None
        self.observer_failures = FailureCount("observer_failed")
        """Observers that raised on a frame: counted and logged, inference goes on."""

    def start(self) -> None:
        if self.frames is None:
            raise VisionError("a pipeline without a source has no frame loop: hand frames to process()")
        self._thread = threading.Thread(target=self._run, args=(self.frames,), name="frame-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Let the frame in flight finish, then stop; True when the worker ended in time."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self, source: Scheduler | _OneSource) -> None:
        while not self._stop.is_set():
            self.last_heartbeat = time.monotonic()
            waited = time.perf_counter()
            frames = source.next_batch(self._batch_limit(), GET_TIMEOUT_S)
            if not frames:
                continue
            wait_ms = (time.perf_counter() - waited) * 1000.0
            try:
                results = self.process_batch(frames, wait_ms)
            except SlotEmptyError:
                continue
            for result in results:
                self.last_result = result
                for observer in self.observers:
                    try:
                        observer(result)
                    except Exception as exc:  # a broken monitor must not stop inference
                        self.observer_failures.failed(observer, exc)

    def _batch_limit(self) -> int:
        serving = self.slot.serving
        if serving is None:
            return 1
        try:
            return self._prepare(serving).max_batch
        except Exception:  # a model that cannot be prepared fails frame by frame in process_batch
            return 1

    def _prepare(self, serving: Serving) -> _Prepared:
        prepared = self._prepared
        if prepared is None or prepared.serving is not serving:
            prepared = self._prepared = _Prepared(serving)
        return prepared

    def process(self, frame: Frame, wait_ms: float = 0.0) -> FrameResult:
        """Run one frame through the serving model; never raises for a model failure."""
        return self.process_batch([frame], wait_ms)[0]

    def process_batch(self, frames: list[Frame], wait_ms: float = 0.0) -> list[FrameResult]:
        """Run frames (one per camera) through the serving model under one lease: a swap falls
        between two batches. Frames whose input tensors have the same shape share one inference."""
        with self.slot.lease() as serving:
            name, version = serving.name, serving.version
            runs = self._infer_all(serving, frames)
        results = []
        for frame, (timings, prediction, finite, error, batch) in zip(frames, runs, strict=True):
            timings = {"capture_wait": wait_ms, **timings,
                       "end_to_end": (time.monotonic() - frame.captured_at) * 1000.0}
            self._count(version, error, finite)
            self.cameras.record(frame.source, timings, error is not None)
            if error is None:
                self.recorder.record(timings)
                self.counters.record_infer(version, timings["infer"] / batch)
            else:
                log.warning("frame_failed", model=name, version=version, camera=frame.source,
                            frame=frame.index, error=error)
            results.append(FrameResult(frame, name, version, timings, prediction, finite, error, batch))
        self.first_frame.set()
        return results

    def _infer_all(self, serving: Serving, frames: list[Frame]) -> list[_Run]:
        runs: list[_Run | None] = [None] * len(frames)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, Geometry, float]]] = {}
        try:
            prepared = self._prepare(serving)
        except Exception as exc:  # the model cannot take frames: every frame fails, serving goes on
            error = f"{type(exc).__name__}: {exc}"
            return [({"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}, None, True, error, 1)
                    for _ in frames]
        for position, frame in enumerate(frames):
            t0 = time.perf_counter()
            try:
                tensor, geometry = prepared.preprocessor.prep(frame.image)
            except Exception as exc:  # one bad frame fails alone
                runs[position] = ({"preprocess": (time.perf_counter() - t0) * 1000.0, "infer": 0.0,
                                   "postprocess": 0.0}, None, True, f"{type(exc).__name__}: {exc}", 1)
                continue
            prep_ms = (time.perf_counter() - t0) * 1000.0
            groups.setdefault(tensor.shape, []).append((position, tensor, geometry, prep_ms))
        for members in groups.values():
            for position, run in self._infer_group(serving, prepared, members):
                runs[position] = run
        return [run for run in runs if run is not None]

    def _infer_group(self, serving: Serving, prepared: _Prepared,
                     members: list[tuple[int, np.ndarray, Geometry, float]]) -> list[tuple[int, _Run]]:
        count = len(members)
        t1 = time.perf_counter()
        error: str | None = None
        per_frame: list[dict[str, np.ndarray]] = []
        try:
            tensor = members[0][1] if count == 1 else np.concatenate([m[1] for m in members])
            outputs = serving.engine.infer({prepared.input_name: tensor})
            per_frame = split_outputs(outputs, count)
        except Exception as exc:  # the model misbehaved: count it, keep serving
            error = f"{type(exc).__name__}: {exc}"
        infer_ms = (time.perf_counter() - t1) * 1000.0
        done = []
        for index, (position, _, geometry, prep_ms) in enumerate(members):
            t2 = time.perf_counter()
            prediction: Prediction | None = None
            finite = True
            frame_error = error
            if frame_error is None:
                try:
                    finite = all_finite(per_frame[index])
                    if finite:
                        prediction = prepared.head(per_frame[index], geometry)
                except Exception as exc:  # the head failed on this frame's output
                    frame_error = f"{type(exc).__name__}: {exc}"
            timings = {"preprocess": prep_ms, "infer": infer_ms,
                       "postprocess": (time.perf_counter() - t2) * 1000.0}
            done.append((position, (timings, prediction, finite, frame_error, count)))
        return done

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
