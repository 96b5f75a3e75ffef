"""A test double of the TensorRT 11 Python module and of a CUDA device, for machines without a GPU.

What it stands in for, and nothing more:

* The ``tensorrt`` module's runtime part as the agent uses it: ``ILogger`` (with
  ``Severity``), ``Runtime(logger).deserialize_cuda_engine(buffer)`` (returns
  None and logs an error for a plan it cannot read or one built by another
  version), ``ICudaEngine`` (``num_io_tensors``, ``get_tensor_name``,
  ``get_tensor_mode``, ``get_tensor_shape`` with -1 for dynamic dims,
  ``get_tensor_dtype``, ``get_tensor_profile_shape(name, 0)`` -> [min, opt, max],
  ``is_shape_inference_io``, ``create_execution_context``) and
  ``IExecutionContext`` (``set_input_shape`` returns False outside the profile,
  ``get_tensor_shape``, ``set_tensor_address``, ``execute_async_v3(stream)``
  returns False when a shape or address is missing), ``DataType``, ``nptype``,
  ``TensorIOMode``.
* Its builder part: ``Builder``, ``create_network(flags)`` with
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, ``OnnxParser.parse_from_file``,
  ``IBuilderConfig`` (``set_memory_pool_limit``, ``set_flag``, ``default_device_type``,
  ``DLA_core``, ``add_optimization_profile``, timing cache, ``progress_monitor``),
  ``build_serialized_network`` (returns None and logs an error when FP16/INT8 flags
  meet a strongly typed network or a dynamic input has no profile, as TensorRT does).
  ``BuilderFlag`` is TensorRT 11's set (no FP16); :func:`flavour` gives a module
  with TensorRT 10's set (with FP16 and INT8).
* A CUDA device: :class:`FakeCudaMemory` implements the agent's ``CudaMemory``
  interface on host memory. Device addresses are opaque integers that only this
  object can read; copies and kernels queued on a stream run in order at
  ``stream_synchronize``, so reading an output before synchronizing shows stale
  data, as on a GPU. Double frees, frees of unknown buffers, out-of-range copies
  and work on a destroyed stream raise ``CudaError``.

"Kernels" are the ONNX model run by ONNX Runtime on the CPU: a "plan" is a small
header (version, profile, flags) followed by the ONNX bytes. Timing and GPU
numerics are not modelled; precision flags are recorded, not applied.
"""

from __future__ import annotations

import enum
import hashlib
import json
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from agent.runtime.cuda import CudaError

__version__ = "11.4.0"
PLAN_MAGIC = b"TRT-DOUBLE-PLAN\n"
CACHE_MAGIC = b"TRT-DOUBLE-TIMING\n"
FIRST_ADDRESS = 0x7F00_0000_0000
ALIGNMENT = 256
DEFAULT_TOTAL = 8 << 30

_device: FakeCudaMemory | None = None


def attach(memory: FakeCudaMemory | None) -> None:
    """Make ``memory`` the device that execution contexts read and write."""
    global _device
    _device = memory


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        raise NotImplementedError


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
          DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8,
          DataType.INT64: np.int64}
_FROM_ONNX = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
              onnx.TensorProto.INT8: DataType.INT8, onnx.TensorProto.INT32: DataType.INT32,
              onnx.TensorProto.BOOL: DataType.BOOL, onnx.TensorProto.UINT8: DataType.UINT8,
              onnx.TensorProto.INT64: DataType.INT64}


def nptype(trt_type: DataType) -> type:
    try:
        return _NUMPY[trt_type]
    except KeyError:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy "
                        "datatype.") from None


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Dims(tuple):
    """TensorRT's Dims behaves like a tuple of ints."""


# ---------------------------------------------------------------- the fake device


class FakeCudaMemory:
    """The agent's ``CudaMemory`` interface on host memory (see the module docstring)."""

    backend = "double"

    def __init__(self, total: int = DEFAULT_TOTAL) -> None:
        self.total = total
        self.allocations: dict[int, bytearray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: dict[int, list[Callable[[], None]]] = {}
        self.counts = {"device_alloc": 0, "device_free": 0, "pinned_alloc": 0, "pinned_free": 0,
                       "stream_create": 0, "stream_destroy": 0}
        self._next = FIRST_ADDRESS

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = np.empty(shape, dtype)
        self.pinned[id(array)] = array
        self.counts["pinned_alloc"] += 1
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        if self.pinned.pop(id(array), None) is None:
            raise CudaError("cudaFreeHost failed: cudaErrorInvalidValue (not a live pinned buffer)")
        self.counts["pinned_free"] += 1

    def device_alloc(self, nbytes: int) -> int:
        if nbytes + self.live_bytes > self.total:
            raise CudaError("cudaMalloc failed: cudaErrorMemoryAllocation")
        address = self._next
        self._next += max(nbytes, 1) + (-max(nbytes, 1)) % ALIGNMENT
        self.allocations[address] = bytearray(nbytes)
        self.counts["device_alloc"] += 1
        return address

    def device_free(self, address: int) -> None:
        if self.allocations.pop(address, None) is None:
            raise CudaError("cudaFree failed: cudaErrorInvalidValue (not a live device buffer)")
        self.counts["device_free"] += 1

    def stream_create(self) -> int:
        handle = self._next
        self._next += ALIGNMENT
        self.streams[handle] = []
        self.counts["stream_create"] += 1
        return handle

    def stream_destroy(self, stream: int) -> None:
        self._queue(stream)
        del self.streams[stream]
        self.counts["stream_destroy"] += 1

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._span(dst, src.nbytes)
        self._queue(stream).append(lambda: self.write(dst, src.tobytes()))

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._span(src, dst.nbytes)

        def copy() -> None:
            flat = dst.reshape(-1).view(np.uint8)
            flat[...] = np.frombuffer(self.read(src, dst.nbytes), np.uint8)

        self._queue(stream).append(copy)

    def stream_synchronize(self, stream: int) -> None:
        work = self._queue(stream)
        while work:
            work.pop(0)()

    def mem_info(self) -> tuple[int, int]:
        return self.total - self.live_bytes, self.total

    @property
    def live_bytes(self) -> int:
        return sum(len(buf) for buf in self.allocations.values())

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        self._queue(stream).append(work)

    def read(self, address: int, nbytes: int) -> bytes:
        base, offset = self._span(address, nbytes)
        return bytes(self.allocations[base][offset:offset + nbytes])

    def write(self, address: int, data: bytes) -> None:
        base, offset = self._span(address, len(data))
        self.allocations[base][offset:offset + len(data)] = data

    def _queue(self, stream: int) -> list[Callable[[], None]]:
        if stream not in self.streams:
            raise CudaError(f"stream {stream:#x}: cudaErrorInvalidResourceHandle")
        return self.streams[stream]

    def _span(self, address: int, nbytes: int) -> tuple[int, int]:
        for base, buf in self.allocations.items():
            if base <= address and address + nbytes <= base + len(buf):
                return base, address - base
        raise CudaError(f"{nbytes} bytes at {address:#x}: cudaErrorIllegalAddress")


# ---------------------------------------------------------------- plans


def make_plan(onnx_bytes: bytes, *, profile: dict[str, Sequence[Sequence[int]]] | None = None,
              version: str = __version__, **record: Any) -> bytes:
    """A serialized "engine" the double's Runtime can deserialize."""
    header = {"version": version, "profile": profile or {}, **record}
    return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + onnx_bytes


def read_plan(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and ONNX bytes of a plan written by :func:`make_plan`."""
    if not data.startswith(PLAN_MAGIC):
        raise ValueError("not a plan of the TensorRT double")
    header, _, model = data[len(PLAN_MAGIC):].partition(b"\n")
    return json.loads(header), model


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        try:
            header, model = read_plan(bytes(serialized_engine))
        except ValueError:
            self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code "
                            "1: Serialization (Serialization assertion magicTagRead failed)")
            return None
        if header["version"] != __version__:
            self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code "
                            f"6: API Usage Error (version tag {header['version']} does not match "
                            f"{__version__})")
            return None
        return ICudaEngine(header, model, self.logger)


class ICudaEngine:
    def __init__(self, header: dict[str, Any], model: bytes, logger: ILogger) -> None:
        self._logger = logger
        self._profile = {k: [tuple(d) for d in v] for k, v in header["profile"].items()}
        self._session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        graph = onnx.load_model_from_string(model).graph
        weights = {init.name for init in graph.initializer}
        self._io: list[tuple[str, TensorIOMode, Dims, DataType]] = []
        sides = ((TensorIOMode.INPUT, graph.input), (TensorIOMode.OUTPUT, graph.output))
        for mode, values in sides:
            for value in values:
                if value.name in weights:
                    continue
                tensor = value.type.tensor_type
                dims = Dims(d.dim_value if d.HasField("dim_value") else -1
                            for d in tensor.shape.dim)
                self._io.append((value.name, mode, dims, _FROM_ONNX[tensor.elem_type]))

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def _entry(self, name: str) -> tuple[str, TensorIOMode, Dims, DataType]:
        for entry in self._io:
            if entry[0] == name:
                return entry
        raise KeyError(name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._entry(name)[1]

    def get_tensor_shape(self, name: str) -> Dims:
        return self._entry(name)[2]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._entry(name)[3]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        if profile_index != 0 or name not in self._profile:
            raise RuntimeError(f"no profile {profile_index} shapes for {name!r}")
        return [Dims(d) for d in self._profile[name]]

    def is_shape_inference_io(self, name: str) -> bool:
        self._entry(name)
        return False

    def create_execution_context(self, strategy: object = None) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._output_shapes: dict[tuple[Any, ...], dict[str, tuple[int, ...]]] = {}

    def _error(self, message: str) -> bool:
        self._engine._logger.log(ILogger.Severity.ERROR, message)
        return False

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        _, mode, dims, _ = self._engine._entry(name)
        shape = tuple(int(d) for d in shape)
        if mode != TensorIOMode.INPUT or len(shape) != len(dims):
            return self._error(f"IExecutionContext::setInputShape: Error Code 3: {name} {shape}")
        low, _, high = self._engine._profile.get(name, (dims, dims, dims))
        if any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)):
            return self._error(f"IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                               f"({name} shape {shape} is outside profile {low}..{high})")
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        _, mode, dims, _ = self._engine._entry(name)
        if mode == TensorIOMode.INPUT:
            return Dims(self._shapes.get(name, dims))
        inputs = self._input_shapes()
        if inputs is None:
            return dims
        return Dims(self._outputs_for(inputs)[name])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._engine._entry(name)
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        inputs = self._input_shapes()
        if inputs is None:
            return self._error("IExecutionContext::enqueueV3: Error Code 3: not all input "
                               "shapes are specified")
        missing = [n for n, *_ in self._engine._io if n not in self._addresses]
        if missing:
            return self._error(f"IExecutionContext::enqueueV3: Error Code 3: no address for "
                               f"{missing}")
        if _device is None:
            raise RuntimeError("trt_double.attach(memory) was not called")
        device, addresses = _device, dict(self._addresses)
        device.enqueue(stream_handle, lambda: self._kernel(device, dict(inputs), addresses))
        return True

    def _input_shapes(self) -> dict[str, tuple[int, ...]] | None:
        shapes = {}
        for name, mode, dims, _ in self._engine._io:
            if mode != TensorIOMode.INPUT:
                continue
            if name not in self._shapes and any(d < 0 for d in dims):
                return None
            shapes[name] = self._shapes.get(name, tuple(dims))
        return shapes

    def _outputs_for(self, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        key = tuple(sorted(inputs.items()))
        if key not in self._output_shapes:
            feeds = {n: np.zeros(s, nptype(self._engine.get_tensor_dtype(n)))
                     for n, s in inputs.items()}
            names = [o.name for o in self._engine._session.get_outputs()]
            results = self._engine._session.run(names, feeds)
            self._output_shapes[key] = {n: r.shape for n, r in zip(names, results, strict=True)}
        return self._output_shapes[key]

    def _kernel(self, device: FakeCudaMemory, inputs: dict[str, tuple[int, ...]],
                addresses: dict[str, int]) -> None:
        feeds = {}
        for name, shape in inputs.items():
            dtype = np.dtype(nptype(self._engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            feeds[name] = np.frombuffer(device.read(addresses[name], nbytes), dtype).reshape(shape)
        names = [o.name for o in self._engine._session.get_outputs()]
        for name, result in zip(names, self._engine._session.run(names, feeds), strict=True):
            dtype = np.dtype(nptype(self._engine.get_tensor_dtype(name)))
            device.write(addresses[name], np.ascontiguousarray(result, dtype).tobytes())


# ---------------------------------------------------------------- builder


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


BuilderFlag = enum.Enum("BuilderFlag", ["GPU_FALLBACK", "REFIT", "TF32", "SPARSE_WEIGHTS",
                                        "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"])


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class DeviceType(enum.Enum):
    GPU = 0
    DLA = 1


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


class ITimingCache:
    def __init__(self, entries: dict[str, int]) -> None:
        self._entries = entries

    def serialize(self) -> IHostMemory:
        return IHostMemory(CACHE_MAGIC + json.dumps(self._entries, sort_keys=True).encode())


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, list[tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int],
                  max: Sequence[int]) -> None:
        self._shapes[input] = [tuple(min), tuple(opt), tuple(max)]


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        typed_bit = 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self._strongly_typed = bool(flags & typed_bit)
        self._model: bytes | None = None
        self._inputs: dict[str, tuple[int, ...]] = {}


class _ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network = network
        self._errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        try:
            data = Path(model).read_bytes()
            graph = onnx.load_model_from_string(data).graph
        except Exception as exc:  # the real parser reports, never raises
            self._errors.append(_ParserError(f"ModelImporter.cpp: failed to parse {model}: {exc}"))
            return False
        weights = {init.name for init in graph.initializer}
        self._network._model = data
        self._network._inputs = {
            i.name: tuple(d.dim_value if d.HasField("dim_value") else -1
                          for d in i.type.tensor_type.shape.dim)
            for i in graph.input if i.name not in weights
        }
        return True


class IBuilderConfig:
    def __init__(self) -> None:
        self._flags: set[str] = set()
        self._pools: dict[str, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing: ITimingCache | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.progress_monitor: IProgressMonitor | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[pool.name] = int(pool_size)

    def set_flag(self, flag: enum.Enum) -> None:
        self._flags.add(flag.name)

    def get_flag(self, flag: enum.Enum) -> bool:
        return flag.name in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        for low, mid, high in profile._shapes.values():
            if not all(a <= b <= c for a, b, c in zip(low, mid, high, strict=True)):
                return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache({})
        if not data.startswith(CACHE_MAGIC):
            return None
        return ITimingCache(json.loads(data[len(CACHE_MAGIC):]))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._timing = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self.num_DLA_cores = 0

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _fail(self, message: str) -> None:
        self._logger.log(ILogger.Severity.ERROR, message)

    def build_serialized_network(self, network: INetworkDefinition,
                                 config: IBuilderConfig) -> IHostMemory | None:
        typed = {"FP16", "INT8"} & config._flags
        if network._strongly_typed and typed:
            self._fail(f"Error Code 4: API Usage Error (flags {sorted(typed)} are not allowed "
                       "with a strongly typed network)")
            return None
        profile = config._profiles[0]._shapes if config._profiles else {}
        dynamic = [n for n, dims in network._inputs.items() if -1 in dims and n not in profile]
        if dynamic or network._model is None:
            self._fail(f"Error Code 4: Network has dynamic inputs {dynamic} but no profile")
            return None
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic selection", "Building engine", 3)
            for step in range(3):
                if not monitor.step_complete("Tactic selection", step):
                    return None
            monitor.phase_finish("Tactic selection")
            monitor.step_complete("Building engine", 0)
            monitor.step_complete("Building engine", 1)
            monitor.phase_finish("Building engine")
        if config._timing is not None:
            digest = hashlib.sha256(network._model).hexdigest()
            config._timing._entries[digest] = config._timing._entries.get(digest, 0) + 1
        record = {"flags": sorted(config._flags), "strongly_typed": network._strongly_typed,
                  "pools": config._pools, "device": config.default_device_type.name,
                  "dla_core": config.DLA_core,
                  "timing_entries": len(config._timing._entries) if config._timing else 0}
        return IHostMemory(make_plan(network._model, profile=profile, **record))


def flavour(version: str) -> types.ModuleType:
    """This double as a module of another TensorRT version; 10.x gets FP16 and INT8 flags."""
    module = types.ModuleType(f"trt_double_{version.replace('.', '_')}")
    module.__dict__.update({k: v for k, v in globals().items() if not k.startswith("__")})
    module.__version__ = version
    if version.split(".")[0] == "10":
        module.BuilderFlag = enum.Enum("BuilderFlag", [*BuilderFlag.__members__, "FP16", "INT8"])
    return module
