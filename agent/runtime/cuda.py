"""CUDA memory, streams and copies for the TensorRT runtime, through pycuda or cuda-python.

One small interface (:class:`CudaMemory`) with two implementations: pycuda, which
JetPack images usually carry, and NVIDIA's cuda-python (``cuda.bindings.runtime``,
or ``cuda.cudart`` in older releases). Nothing here is imported at module load:
the agent runs on machines without CUDA, and :func:`gpu_available` must answer
there without raising. cuda-python's ``cudaGetDeviceCount`` returns an error
code on a machine without a driver, so it is asked first; pycuda's ``init``
raises, so it is only tried inside a guard.
"""

from __future__ import annotations

import ctypes
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import structlog

from agent.runtime.base import EngineError, EngineLoadError

__all__ = [
    "CudaError",
    "CudaMemory",
    "CudaPythonMemory",
    "GpuInfo",
    "PyCudaMemory",
    "device_memory",
    "gpu_available",
    "gpu_probe",
    "open_cuda_memory",
]

log = structlog.get_logger(__name__)

DEVICE_INDEX = 0
"""The agent serves from the first GPU (Jetson modules have exactly one)."""
MIN_ALLOCATION = 1
"""Bytes allocated for an empty tensor, so every tensor has a valid address."""
CUDA_PYTHON_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


class CudaError(EngineError):
    """A CUDA call failed (allocation, copy, stream)."""


@dataclass(frozen=True)
class GpuInfo:
    """The GPU the agent would serve from."""

    name: str
    compute_capability: tuple[int, int]
    count: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("GPU name must not be empty")
        if self.count < 1:
            raise ValueError(f"GPU count must be at least 1, got {self.count}")

    @property
    def sm(self) -> str:
        """Compute capability as TensorRT and NVIDIA's tables write it: ``8.7``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def _cuda_python() -> ModuleType | None:
    for name in CUDA_PYTHON_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _pycuda() -> ModuleType | None:
    try:
        return importlib.import_module("pycuda.driver")
    except ImportError:
        return None


def _error_text(rt: ModuleType, err: Any) -> str:
    name = getattr(err, "name", str(err))
    try:
        _, text = rt.cudaGetErrorString(err)
        return f"{name}: {text.decode(errors='replace')}"
    except Exception:  # a message for a message; never mask the first error
        return name


def _probe_cuda_python(rt: ModuleType) -> GpuInfo | str:
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        return f"cuda-python: cudaGetDeviceCount failed ({_error_text(rt, err)})"
    if not count:
        return "cuda-python: no CUDA device"
    err, prop = rt.cudaGetDeviceProperties(DEVICE_INDEX)
    if err != rt.cudaError_t.cudaSuccess:
        return f"cuda-python: cudaGetDeviceProperties failed ({_error_text(rt, err)})"
    raw = prop.name
    name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GpuInfo(name.rstrip("\x00").strip(), (int(prop.major), int(prop.minor)), int(count))


def _probe_pycuda(driver: ModuleType) -> GpuInfo | str:
    try:
        driver.init()
        count = driver.Device.count()
        if not count:
            return "pycuda: no CUDA device"
        device = driver.Device(DEVICE_INDEX)
        major, minor = device.compute_capability()
        return GpuInfo(str(device.name()).strip(), (int(major), int(minor)), int(count))
    except Exception as exc:  # pycuda raises its own types on a driverless machine
        return f"pycuda: {type(exc).__name__}: {exc}"


def gpu_probe() -> GpuInfo | str:
    """The GPU to serve from, or a sentence saying why there is none. Never raises."""
    reasons = []
    rt = _cuda_python()
    if rt is not None:
        try:
            found = _probe_cuda_python(rt)
        except Exception as exc:  # a probe must not crash the agent
            found = f"cuda-python: {type(exc).__name__}: {exc}"
        if isinstance(found, GpuInfo):
            return found
        reasons.append(found)
    driver = _pycuda()
    if driver is not None:
        found = _probe_pycuda(driver)
        if isinstance(found, GpuInfo):
            return found
        reasons.append(found)
    if not reasons:
        return "neither cuda-python nor pycuda is installed"
    return "; ".join(reasons)


def gpu_available() -> GpuInfo | None:
    """The GPU to serve from, or None on a machine without one (or without a driver)."""
    found = gpu_probe()
    return found if isinstance(found, GpuInfo) else None


class CudaMemory(Protocol):
    """Pinned host buffers, device buffers, one stream kind, async copies.

    Device buffers and streams are plain integers (addresses and handles) so that
    they can be handed to TensorRT's ``set_tensor_address`` and
    ``execute_async_v3`` directly.
    """

    backend: str

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...

    def free_pinned(self, array: np.ndarray) -> None: ...

    def device_alloc(self, nbytes: int) -> int: ...

    def device_free(self, address: int) -> None: ...

    def stream_create(self) -> int: ...

    def stream_destroy(self, stream: int) -> None: ...

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None: ...

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None: ...

    def stream_synchronize(self, stream: int) -> None: ...

    def mem_info(self) -> tuple[int, int]: ...


class CudaPythonMemory:
    """:class:`CudaMemory` on cuda-python's runtime API (the primary context of GPU 0)."""

    backend = "cuda-python"

    def __init__(self, rt: ModuleType) -> None:
        self._rt = rt
        self._pinned: dict[int, tuple[np.ndarray, int]] = {}
        self._streams: dict[int, Any] = {}

    def _check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{what} failed: {_error_text(self._rt, err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        nbytes = max(size, MIN_ALLOCATION)
        address = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_ubyte * nbytes).from_address(address)
        array: np.ndarray = np.ctypeslib.as_array(raw)[:size].view(dtype).reshape(shape)
        self._pinned[id(array)] = (array, address)
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        entry = self._pinned.pop(id(array), None)
        if entry is None:
            raise CudaError("pinned buffer is not one of ours or freed already")
        self._check(self._rt.cudaFreeHost(entry[1]), "cudaFreeHost")

    def device_alloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, MIN_ALLOCATION)), "cudaMalloc"))

    def device_free(self, address: int) -> None:
        self._check(self._rt.cudaFree(address), "cudaFree")

    def stream_create(self) -> int:
        flags = self._rt.cudaStreamNonBlocking
        stream = self._check(self._rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        handle = int(stream)
        self._streams[handle] = stream
        return handle

    def stream_destroy(self, stream: int) -> None:
        self._check(self._rt.cudaStreamDestroy(self._streams.pop(stream)), "cudaStreamDestroy")

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self._streams[stream]),
            "cudaMemcpyAsync (host to device)",
        )

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self._streams[stream]),
            "cudaMemcpyAsync (device to host)",
        )

    def stream_synchronize(self, stream: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._streams[stream]), "cudaStreamSynchronize")

    def mem_info(self) -> tuple[int, int]:
        free, total = self._check(self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)


class PyCudaMemory:
    """:class:`CudaMemory` on pycuda, inside GPU 0's primary context (the one TensorRT uses).

    pycuda needs a current context in the calling thread, and the frame worker is not
    the thread that loaded the engine, so every call pushes the context and pops it.
    """

    backend = "pycuda"

    def __init__(self, driver: ModuleType) -> None:
        self._cuda = driver
        driver.init()
        self._context = driver.Device(DEVICE_INDEX).retain_primary_context()
        self._device: dict[int, Any] = {}
        self._pinned: dict[int, np.ndarray] = {}
        self._streams: dict[int, Any] = {}

    def _run(self, what: str, call: Any, *args: Any) -> Any:
        self._context.push()
        try:
            return call(*args)
        except self._cuda.Error as exc:
            raise CudaError(f"{what} failed: {exc}") from exc
        finally:
            self._cuda.Context.pop()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array: np.ndarray = self._run("pagelocked_empty", self._cuda.pagelocked_empty, shape,
                                      dtype)
        self._pinned[id(array)] = array
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        if self._pinned.pop(id(array), None) is None:
            raise CudaError("pinned buffer is not one of ours or freed already")
        allocation: Any = array.base
        self._run("free pinned", allocation.free)

    def device_alloc(self, nbytes: int) -> int:
        allocation = self._run("mem_alloc", self._cuda.mem_alloc, max(nbytes, MIN_ALLOCATION))
        self._device[int(allocation)] = allocation
        return int(allocation)

    def device_free(self, address: int) -> None:
        allocation = self._device.pop(address, None)
        if allocation is None:
            raise CudaError(f"device buffer at {address:#x} is not one of ours or freed already")
        self._run("mem free", allocation.free)

    def stream_create(self) -> int:
        stream = self._run("Stream", self._cuda.Stream)
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def stream_destroy(self, stream: int) -> None:
        self._streams.pop(stream)

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        copy = self._cuda.memcpy_htod_async
        self._run("memcpy_htod_async", copy, dst, src, self._streams[stream])

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        copy = self._cuda.memcpy_dtoh_async
        self._run("memcpy_dtoh_async", copy, dst, src, self._streams[stream])

    def stream_synchronize(self, stream: int) -> None:
        self._run("stream synchronize", self._streams[stream].synchronize)

    def mem_info(self) -> tuple[int, int]:
        free, total = self._run("mem_get_info", self._cuda.mem_get_info)
        return int(free), int(total)


def open_cuda_memory() -> CudaMemory:
    """The CUDA memory layer: pycuda when importable (JetPack), else cuda-python.

    Raises EngineLoadError, naming why, when there is no GPU or no CUDA binding.
    """
    found = gpu_probe()
    if not isinstance(found, GpuInfo):
        raise EngineLoadError(f"runtime 'tensorrt' needs an NVIDIA GPU with a working driver: "
                              f"{found}")
    driver = _pycuda()
    if driver is not None:
        try:
            return PyCudaMemory(driver)
        except Exception as exc:  # fall through to cuda-python, say why
            log.warning("pycuda_unusable", error=f"{type(exc).__name__}: {exc}")
    rt = _cuda_python()
    if rt is None:
        raise EngineLoadError("runtime 'tensorrt' needs pycuda or cuda-python; neither is usable")
    return CudaPythonMemory(rt)


def device_memory() -> tuple[int, int] | None:
    """Free and total device memory in bytes, or None without a GPU. Never raises.

    On Jetson the GPU shares the system memory, so these are the figures of the
    memory the GPU can still allocate from, not of a separate card.
    """
    if gpu_available() is None:
        return None
    rt = _cuda_python()
    try:
        if rt is not None:
            return CudaPythonMemory(rt).mem_info()
        driver = _pycuda()
        return PyCudaMemory(driver).mem_info() if driver is not None else None
    except Exception as exc:  # telemetry must not take the agent down
        log.warning("device_memory_unreadable", error=f"{type(exc).__name__}: {exc}")
        return None
