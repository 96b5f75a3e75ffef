"""The frame worker's side of a shadow run: sampled frames to the candidate, off the frame worker.

A pipeline observer. While a shadow run is live (agent.models.shadow.ShadowGate),
on the frames its budget samples it copies the frame and hands the copy, with the
serving model's result, to ``submit`` (the deployment manager's low-priority
model-loader thread). There the candidate preprocesses and infers the same frame,
both predictions are summarized and the gate records their agreement. The frame
worker only copies the image: it never waits for the candidate, and a sample that
finds the candidate still busy with the previous one is skipped (and counted), so
the serving frames keep their pace and none is dropped.

On a camera with a second stage (a recognizer, ``read``), the boxes both models agree on
(``match_boxes``, IoU 0.5) are read by the serving recognizer twice, as the serving model
and as the candidate placed them, in one batch, and the gate records how far the texts
agree (``ShadowGate.compare_texts``): a detector whose boxes match but cut the text
differently reads differently.

A recognizer candidate (``ShadowGate.stage``: the second stage it is a version of) has no
frames of its own to infer: on the sampled frames of the cameras whose second stage is that
name (``second``, the daemon's ``StageBook``) the serving detector's boxes are cut out once and
read by the serving recognizer and by the candidate, on the loader thread as above, and the
gate records how far the texts agree, with each one's milliseconds per crop.

With ``capped`` engine options (``[deploy] shadow_threads``, 1 by default) the candidate
infers with an ONNX Runtime session of its own, loaded beside it with fewer intra-op
threads on the first sample: with as many threads as the serving engine, the candidate's
inference slowed the serving model's inference while both ran (docs/benchmarks.md, "Shadow
runs"). The session is the same model file and preprocessing; it is closed when the run
ends, and the candidate's own engine is the one that serves when it is promoted.

The budget ``every_nth`` is also a share of time: after a comparison that took
``t``, the candidate rests ``(every_nth - 1) * t`` before it takes the next
sample, so a candidate slower than the serving model still works at most
1 / ``every_nth`` of the time instead of back to back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from agent.models import EngineOptions, InstalledModel, ShadowGate, load_serving, lower_thread_priority, match_boxes
from agent.monitor import FailureCount
from agent.runtime import Serving
from agent.vision.heads import Detection
from agent.vision.pipeline import FrameResult, _Prepared, all_finite
from agent.vision.summary import summarize
from agent.vision.transforms import Prediction

__all__ = ["PairedReading", "SecondReads", "ShadowRunner", "shadow_session_options"]

log = structlog.get_logger(__name__)

Submit = Callable[[Callable[[], None]], None]
Read = Callable[[str, np.ndarray, Sequence[Detection]], Sequence[Any] | None]
"""A camera's second stage: (camera, image, boxes) -> a reading (with a ``text``) per box, in order;
None when the camera has none or the reading failed (the daemon's ``ResultsPublisher.read_beside``)."""


class PairedReading(Protocol):
    """The same crops read by the serving recognizer and by a candidate, box by box, with each one's
    milliseconds per crop (agent.results.stages)."""

    @property
    def serving(self) -> Sequence[Any]: ...
    @property
    def candidate(self) -> Sequence[Any]: ...
    @property
    def serving_ms(self) -> float: ...
    @property
    def candidate_ms(self) -> float: ...


class SecondReads(Protocol):
    """The cameras' second stages, as a recognizer candidate's run reads them (the daemon's StageBook)."""

    def stage_of(self, camera: str) -> str | None:
        """The second stage ``camera`` names (None: none)."""

    def read_pair(self, camera: str, candidate: Serving, image: np.ndarray,
                  detections: Sequence[Detection]) -> PairedReading | None:
        """``detections`` of ``image`` read by the serving second stage ``candidate.name`` and by
        ``candidate`` on the same crops; None when ``camera`` names another, or nothing serves it."""


MAX_IN_FLIGHT = 1
"""Sampled frames waiting for, or in, the candidate: one, so that a candidate slower than the budget
allows falls behind by skipping samples, never by queueing frames (and their memory)."""


def shadow_session_options(options: EngineOptions, threads: int) -> EngineOptions | None:
    """The options of a shadow candidate's own session: ``threads`` intra-op threads, ONNX Runtime's
    own preprocessing left out (no ONNX graph rewritten in Python on the loader thread, which holds
    the interpreter lock while the serving frames wait for it); None for ``threads`` 0 (no session of
    its own) or a TensorRT candidate (its threads are not the CPU's)."""
    if threads == 0 or options.runtime != "onnxruntime":
        return None
    return replace(options, threads=threads, fuse_preprocessing=False)


class ShadowRunner:
    """Pipeline observer that runs a shadow run's candidate beside the serving model.

    Given the gate (the run's terms, its candidate engine and its comparisons), ``submit``
    (runs a job off the frame worker; the manager's loader thread), the niceness the
    candidate infers at, ``read`` (the cameras' second stages; None: no text is compared) and
    ``second`` (what a recognizer candidate reads beside; None: a recognizer run compares nothing).
    Failures of the candidate are frames with agreement 0 (the gate counts them); failures of
    the runner itself are counted in ``failures`` and logged.
    """

    def __init__(self, gate: ShadowGate, submit: Submit, nice: int | None, read: Read | None = None,
                 capped: EngineOptions | None = None, second: SecondReads | None = None) -> None:
        self.gate = gate
        self.submit = submit
        self.nice = nice
        self.read = read
        self.second = second
        self.capped = capped
        """Options of the candidate's own shadow session (fewer threads); None: infer with its engine."""
        self._own: tuple[Serving, Serving] | None = None
        """The run's candidate and its capped session (loaded and closed on the loader thread)."""
        self.failures = FailureCount("shadow_compare_failed")
        self._in_flight = 0
        self._rest_until = 0.0
        """``time.monotonic()`` before which the candidate takes no sample (its share of time)."""
        self._lock = threading.Lock()
        self._prepared: _Prepared | None = None

    def __call__(self, result: FrameResult) -> None:
        gate = self.gate
        candidate = gate.serving
        own = self._own
        if own is not None and own[0] is not candidate:  # the run ended: its session closes after its jobs
            self._own = None
            if own[1] is not own[0]:  # never the candidate's own engine: it serves, or the manager closes it
                self.submit(own[1].engine.close)
        if candidate is None or not gate.wants(result.frame.index):
            return
        stage = gate.stage
        if stage is not None and not self._read_here(stage, result):
            return
        compare = self._compare if stage is None else self._compare_reads
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT or time.monotonic() < self._rest_until:
                busy = True
            else:
                busy = False
                self._in_flight += 1
        if busy:
            gate.skip(result.camera)
            return
        copy = replace(result, frame=replace(result.frame, image=result.frame.image.copy()))
        try:
            self.submit(lambda: self._run(compare, candidate, copy))
        except Exception:
            self._done()
            raise

    def _done(self, rest_s: float = 0.0) -> None:
        with self._lock:
            self._in_flight -= 1
            self._rest_until = time.monotonic() + rest_s

    def _read_here(self, stage: str, result: FrameResult) -> bool:
        """Whether a recognizer candidate of ``stage`` reads this frame: its camera names that second
        stage, and the serving detector found boxes on it."""
        if self.second is None or result.prediction is None or self.second.stage_of(result.camera) != stage:
            return False
        return any(isinstance(d, Detection) for d in result.prediction.items)

    def _run(self, compare: Callable[[Serving, FrameResult], float], candidate: Serving,
             served: FrameResult) -> None:
        """On the loader thread: one comparison (``compare`` returns when the candidate's share of time
        began), then the rest its budget asks for."""
        started = time.monotonic()
        try:
            if self.gate.serving is not candidate:
                return  # the run ended while the frame waited
            started = compare(candidate, served)
        except Exception as exc:  # the comparison must never reach the loader's other work
            self.failures.failed("shadow", exc)
        finally:
            spec = self.gate.spec
            self._done((time.monotonic() - started) * (spec.every_nth - 1) if spec is not None else 0.0)

    def _compare(self, candidate: Serving, served: FrameResult) -> float:
        """A detector candidate on the same frame, then the gate records both."""
        engine = self._engine_of(candidate)
        started = time.monotonic()  # a first sample's load is not the candidate's share of time
        ran = self._infer(engine, served)
        serving_ms = served.timings_ms.get("infer", 0.0) / max(served.batch, 1)
        self.gate.compare(summarize(served), summarize(ran), serving_ms, ran.timings_ms["infer"])
        if self.read is not None:
            self._compare_texts(self.read, served, ran)
        return started

    def _compare_reads(self, candidate: Serving, served: FrameResult) -> float:
        """A recognizer candidate on the serving detector's boxes, beside the serving recognizer."""
        started = time.monotonic()
        assert self.second is not None and served.prediction is not None  # as _read_here checked
        self._at_loader_niceness()
        boxes = [d for d in served.prediction.items if isinstance(d, Detection)]
        pair = self.second.read_pair(served.camera, candidate, served.frame.image, boxes)
        if pair is not None:
            self.gate.compare_texts(served.camera, pair.serving, pair.candidate, pair.serving_ms, pair.candidate_ms)
        return started

    def _engine_of(self, candidate: Serving) -> Serving:
        """The capped session of ``candidate`` (loaded on its first sample), or the candidate itself."""
        own = self._own
        if own is not None and own[0] is candidate:
            return own[1]
        if self.capped is None or candidate.runtime != "onnxruntime" or candidate.folder is None:
            return candidate
        try:
            capped = load_serving(InstalledModel(candidate.manifest, Path(candidate.folder)), self.capped)
        except Exception as exc:  # the candidate's own engine still compares
            self.failures.failed("shadow_session", exc)
            self._own = (candidate, candidate)
            return candidate
        log.info("shadow_session_loaded", model=candidate.name, version=candidate.version,
                 threads=self.capped.threads)
        self._own = (candidate, capped)
        return capped

    def _compare_texts(self, read: Read, served: FrameResult, ran: FrameResult) -> None:
        """The serving recognizer on the boxes both models agree on, as each placed them (one batch)."""
        if served.prediction is None or ran.prediction is None:
            return
        serving = [d for d in served.prediction.items if isinstance(d, Detection)]
        candidate = [d for d in ran.prediction.items if isinstance(d, Detection)]
        pairs = match_boxes(serving, candidate)
        if not pairs:
            return
        readings = read(served.camera, served.frame.image,
                        [serving[i] for i, _ in pairs] + [candidate[j] for _, j in pairs])
        if readings is None or len(readings) != 2 * len(pairs):  # no second stage, or it failed
            return
        self.gate.compare_texts(served.camera, readings[:len(pairs)], readings[len(pairs):])

    def _at_loader_niceness(self) -> None:
        """Nice the loader thread (it loaded the candidate there, niced already) to ``nice``; never un-nice
        it per frame: that needs a privilege, and the manager restores the threads after a swap."""
        if self.nice and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < self.nice:
            lower_thread_priority(self.nice)

    def _infer(self, candidate: Serving, served: FrameResult) -> FrameResult:
        prepared = self._prepared
        if prepared is None or prepared.serving is not candidate:
            prepared = self._prepared = _Prepared(candidate)
        frame = served.frame
        prediction: Prediction | None = None
        finite, error = True, None
        start = time.perf_counter()
        infer_ms = 0.0
        self._at_loader_niceness()
        try:
            tensor, geometry = prepared.preprocessor.prep(frame.image)
            started = time.perf_counter()
            outputs = candidate.engine.infer({prepared.input_name: tensor})
            infer_ms = (time.perf_counter() - started) * 1000.0
            finite = all_finite(outputs)
            if finite:
                prediction = prepared.head(outputs, geometry)
        except Exception as exc:  # the candidate failed on this frame: agreement 0
            error = f"{type(exc).__name__}: {exc}"
        total_ms = (time.perf_counter() - start) * 1000.0
        return FrameResult(frame, candidate.name, candidate.version, {"infer": infer_ms, "total": total_ms},
                           prediction, finite, error)
