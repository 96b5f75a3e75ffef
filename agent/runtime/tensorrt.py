"""TensorRT 10/11 engine: deserialize a plan, bind named tensors, run on one CUDA stream.

Only the name-based I/O API of TensorRT 10 and 11 is used (``num_io_tensors``,
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). Device memory goes through :mod:`agent.runtime.cuda`.
Buffers are allocated once per set of input shapes: a frame with the same shapes
as the previous one reuses them, a new shape frees them and allocates anew, and
an input whose batch dimension is dynamic gets buffers for its optimization
profile's largest batch, so that batches of 1 to that many frames (several
cameras, agent.vision.scheduler) share one allocation and differ only in the
shape set on the context; and
``close`` frees everything, once, so that a swapped-out engine gives its device
memory back. TensorRT itself is imported only when an engine is loaded, after the
GPU has been found, so this module imports on any machine. Which runtime serves is
:mod:`agent.runtime.selection`; the optimization profile type is ``agent.runtime.base.ShapeProfile``.
"""

from __future__ import annotations

import importlib
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import structlog

from agent.runtime.base import EngineError, EngineLoadError, ShapeProfile, TensorSpec
from agent.runtime.cuda import CudaError, CudaMemory, open_cuda_memory

__all__ = ["RUNTIME", "TensorRTEngine", "import_tensorrt", "make_logger"]

log = structlog.get_logger(__name__)

RUNTIME = "tensorrt"
TENSORRT_MODULES = ("tensorrt", "tensorrt_lean")
"""The full package first; the lean runtime only runs version-compatible plans."""
PROFILE_INDEX = 0
KEPT_LOG_ERRORS = 8
"""TensorRT error messages kept to explain a failed call."""


def import_tensorrt(names: tuple[str, ...] = TENSORRT_MODULES) -> ModuleType:
    """The TensorRT Python module, or EngineLoadError naming what was tried."""
    failures = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    raise EngineLoadError("TensorRT Python package not importable (" + "; ".join(failures) + ")")


def _dims(dims: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def make_logger(trt: ModuleType) -> Any:
    """An ILogger that forwards TensorRT's messages to structlog and keeps the last errors."""

    severity = trt.ILogger.Severity
    errors = (severity.INTERNAL_ERROR, severity.ERROR)

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]  # tensorrt has no type stubs
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: deque[str] = deque(maxlen=KEPT_LOG_ERRORS)

        def log(self, level: Any, msg: str) -> None:
            if level in errors:
                self.errors.append(msg)
                log.error("tensorrt_error", message=msg)
            elif level == severity.WARNING:
                log.warning("tensorrt_warning", message=msg)

        def take_errors(self) -> str:
            text = " | ".join(self.errors) or "no message from TensorRT"
            self.errors.clear()
            return text

    return _Logger()


class _Buffers:
    """Pinned host and device buffers for one set of input shapes."""

    def __init__(self, memory: CudaMemory) -> None:
        self._memory = memory
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, int] = {}
        self.nbytes = 0

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.host[name] = self._memory.pinned_empty(shape, dtype)
        self.device[name] = self._memory.device_alloc(self.host[name].nbytes)
        self.nbytes += self.host[name].nbytes

    def free(self) -> None:
        """Free every buffer; each is forgotten before it is freed, so never twice.

        A failing free does not stop the others; the first failure is raised at the end.
        """
        failures: list[CudaError] = []
        while self.device:
            _, address = self.device.popitem()
            _attempt(failures, self._memory.device_free, address)
        while self.host:
            _, array = self.host.popitem()
            _attempt(failures, self._memory.free_pinned, array)
        self.nbytes = 0
        if failures:
            raise failures[0]


def _attempt(failures: list[CudaError], call: Any, *args: Any) -> None:
    try:
        call(*args)
    except CudaError as exc:
        failures.append(exc)


class TensorRTEngine:
    """A deserialized TensorRT engine serving one batch at a time on its own CUDA stream."""

    runtime = RUNTIME

    def __init__(
        self,
        *,
        path: Path,
        memory: CudaMemory,
        logger: Any,
        trt_runtime: Any,
        engine: Any,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        profiles: Mapping[str, ShapeProfile],
    ) -> None:
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.profiles = dict(profiles)
        self._memory = memory
        self._logger = logger
        self._runtime = trt_runtime
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineLoadError(f"{path}: cannot create an execution context: "
                                  f"{logger.take_errors()}")
        self._stream = memory.stream_create()
        self._buffers = _Buffers(memory)
        self._shapes: tuple[tuple[int, ...], ...] | None = None
        self._capacity: dict[str, tuple[int, ...]] = {}
        """The shape each I/O buffer was allocated for (the largest batch it holds)."""
        self._current: dict[str, tuple[int, ...]] = {}
        """The shape of each I/O tensor for the frames bound now (a prefix of its buffer)."""
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dla_core: int | None = None,
        tensorrt: ModuleType | None = None,
        memory: CudaMemory | None = None,
    ) -> TensorRTEngine:
        """Deserialize the plan at ``path``.

        The GPU is looked for before any TensorRT object exists; ``tensorrt`` and
        ``memory`` replace the real module and CUDA layer (tests pass doubles).
        """
        path = Path(path)
        try:
            plan = path.read_bytes()
        except OSError as exc:
            raise EngineLoadError(f"{path}: cannot read engine: {exc.strerror}") from exc
        memory = memory if memory is not None else open_cuda_memory()
        trt = tensorrt if tensorrt is not None else import_tensorrt()
        logger = make_logger(trt)
        trt_runtime = trt.Runtime(logger)
        if dla_core is not None:
            trt_runtime.DLA_core = dla_core
        engine = trt_runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineLoadError(
                f"{path}: TensorRT {trt.__version__} could not deserialize the engine "
                f"(built by another TensorRT version or for another GPU?): {logger.take_errors()}"
            )
        inputs, outputs, profiles = _describe(trt, engine, path)
        loaded = cls(path=path, memory=memory, logger=logger, trt_runtime=trt_runtime,
                     engine=engine, inputs=inputs, outputs=outputs, profiles=profiles)
        log.info("engine_loaded", runtime=RUNTIME, path=str(path), backend=memory.backend,
                 tensorrt=trt.__version__, inputs=[s.name for s in inputs],
                 outputs=[s.name for s in outputs])
        return loaded

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffer_bytes(self) -> int:
        """Bytes of I/O buffers held on the device now (and as many pinned on the host)."""
        return self._buffers.nbytes

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._closed:
                raise EngineError(f"{self.path}: engine is closed")
            arrays = self._check_feeds(feeds)
            shapes = tuple(arrays[spec.name].shape for spec in self.inputs)
            if shapes != self._shapes:
                if not self._rebatch(arrays):
                    self._bind(arrays)
                self._shapes = shapes
            return self._run(arrays)

    def close(self) -> None:
        """Free buffers, stream, context and engine; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            failures: list[CudaError] = []
            _attempt(failures, self._memory.stream_synchronize, self._stream)
            _attempt(failures, self._buffers.free)
            _attempt(failures, self._memory.stream_destroy, self._stream)
            self._context = None
            self._engine = None
            self._runtime = None
            self._shapes = None
            self._capacity, self._current = {}, {}
            if failures:
                log.error("engine_close_failed", runtime=RUNTIME, path=str(self.path),
                          errors=[str(f) for f in failures])
            else:
                log.info("engine_closed", runtime=RUNTIME, path=str(self.path))

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {spec.name for spec in self.inputs}
        missing = sorted(wanted - set(feeds))
        unknown = sorted(set(feeds) - wanted)
        if missing or unknown:
            raise EngineError(f"feeds must be exactly {sorted(wanted)}: missing {missing}, "
                              f"unknown {unknown}")
        arrays = {}
        for spec in self.inputs:
            array = np.asarray(feeds[spec.name])
            if array.dtype != spec.dtype:
                raise EngineError(f"input {spec.name!r}: dtype {array.dtype}, the engine wants "
                                  f"{spec.dtype}")
            if array.ndim != len(spec.shape):
                raise EngineError(f"input {spec.name!r}: rank {array.ndim} {array.shape}, the "
                                  f"engine wants {spec.shape}")
            for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if want is not None and want != got:
                    raise EngineError(f"input {spec.name!r}: dim {axis} is {got}, the engine "
                                      f"wants {want} (shape {spec.shape})")
            if spec.name in self.profiles:
                self.profiles[spec.name].check(spec.name, array.shape)
            arrays[spec.name] = array
        return arrays

    def _largest_batch(self, spec: TensorSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``shape`` with the profile's largest batch when the batch dimension is dynamic."""
        profile = self.profiles.get(spec.name)
        if profile is None or spec.shape[0] is not None:
            return shape
        return (max(shape[0], profile.max[0]), *shape[1:])

    def _set_inputs(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Set the input shapes on the context; the output shapes TensorRT derives from them."""
        for spec in self.inputs:
            if not self._context.set_input_shape(spec.name, shapes[spec.name]):
                raise EngineError(f"input {spec.name!r}: TensorRT refused shape "
                                  f"{shapes[spec.name]}: {self._logger.take_errors()}")
        out_shapes = {}
        for spec in self.outputs:
            shape = _dims(self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise EngineError(f"output {spec.name!r} has a data-dependent shape {shape}; "
                                  "this runtime serves only shapes known before execution")
            out_shapes[spec.name] = shape
        return out_shapes

    def _rebatch(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Serve a new batch size from the buffers there are: True when every tensor fits in its
        buffer (same shape but a batch no larger); False when they must be allocated anew."""
        capacity = self._capacity
        if not capacity:
            return False
        shapes = {spec.name: tuple(arrays[spec.name].shape) for spec in self.inputs}
        if not all(_prefix_of(shapes[name], capacity[name]) for name in shapes):
            return False
        out_shapes = self._set_inputs(shapes)
        if not all(_prefix_of(shape, capacity[name]) for name, shape in out_shapes.items()):
            return False
        self._current = {**shapes, **out_shapes}
        return True

    def _bind(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Set the input shapes, then (re)allocate and bind every I/O buffer."""
        shapes = {spec.name: tuple(arrays[spec.name].shape) for spec in self.inputs}
        largest = {spec.name: self._largest_batch(spec, shapes[spec.name]) for spec in self.inputs}
        out_largest = self._set_inputs(largest)
        self._shapes = None
        self._capacity, self._current = {}, {}
        self._memory.stream_synchronize(self._stream)
        self._buffers.free()
        for spec in self.inputs:
            self._buffers.allocate(spec.name, largest[spec.name], spec.dtype)
        for spec in self.outputs:
            self._buffers.allocate(spec.name, out_largest[spec.name], spec.dtype)
        for name, address in self._buffers.device.items():
            if not self._context.set_tensor_address(name, address):
                raise EngineError(f"tensor {name!r}: TensorRT refused its address: "
                                  f"{self._logger.take_errors()}")
        out_shapes = self._set_inputs(shapes) if largest != shapes else out_largest
        self._capacity = {**largest, **out_largest}
        self._current = {**shapes, **out_shapes}
        log.debug("engine_buffers_bound", path=str(self.path), nbytes=self._buffers.nbytes,
                  shapes={name: list(a.shape) for name, a in self._buffers.host.items()})

    def _view(self, name: str) -> np.ndarray:
        """The part of a tensor's pinned buffer the bound batch uses (its first rows)."""
        buffer, shape = self._buffers.host[name], self._current[name]
        return buffer if buffer.shape == shape else buffer[: shape[0]]

    def _run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        device = self._buffers.device
        for spec in self.inputs:
            view = self._view(spec.name)
            np.copyto(view, arrays[spec.name])
            self._memory.copy_htod_async(device[spec.name], view, self._stream)
        if not self._context.execute_async_v3(self._stream):
            self._memory.stream_synchronize(self._stream)
            raise EngineError(f"{self.path}: execute_async_v3 failed: {self._logger.take_errors()}")
        views = {spec.name: self._view(spec.name) for spec in self.outputs}
        for spec in self.outputs:
            self._memory.copy_dtoh_async(views[spec.name], device[spec.name], self._stream)
        self._memory.stream_synchronize(self._stream)
        return {name: view.copy() for name, view in views.items()}


def _prefix_of(shape: tuple[int, ...], capacity: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` is the first rows of a buffer allocated for ``capacity``."""
    return (len(shape) == len(capacity) and shape[1:] == capacity[1:]
            and 0 < shape[0] <= capacity[0])


def _describe(
    trt: ModuleType, engine: Any, path: Path
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, ShapeProfile]]:
    """The engine's inputs, outputs and the profile of each dynamic input."""
    inputs, outputs, profiles = [], [], {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.is_shape_inference_io(name):
            raise EngineLoadError(f"{path}: tensor {name!r} is a shape tensor; not supported")
        trt_dtype = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(trt_dtype))
        except TypeError as exc:
            raise EngineLoadError(f"{path}: tensor {name!r} has TensorRT type {trt_dtype}, "
                                  "which has no numpy equivalent") from exc
        dims = _dims(engine.get_tensor_shape(name))
        spec = TensorSpec(name, tuple(None if d < 0 else d for d in dims), dtype)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(spec)
            if any(d < 0 for d in dims):
                low, mid, high = engine.get_tensor_profile_shape(name, PROFILE_INDEX)
                profiles[name] = ShapeProfile(_dims(low), _dims(mid), _dims(high))
        else:
            outputs.append(spec)
    if not inputs or not outputs:
        raise EngineLoadError(f"{path}: engine has {len(inputs)} inputs and {len(outputs)} "
                              "outputs; need at least one of each")
    return tuple(inputs), tuple(outputs), profiles
