"""ONNX Runtime engine: the CPU runtime everywhere, CUDA/TensorRT providers where present."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from agent.runtime.base import EngineLoadError, TensorSpec

__all__ = ["OnnxRuntimeEngine", "available_providers"]

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Hand memory freed by a closed session back to the OS (glibc keeps it in its heaps otherwise).

    Without this, every swap's freed arena stays in the process as free heap pages
    and RSS climbs with each swap although nothing leaks. No ``gc.collect()`` here: the session is
    freed by its last reference, and a full collection held the GIL for 15-40 ms (up to 300 ms beside
    a load) on the closer thread while the serving model waited for it (docs/benchmarks.md).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _spec(arg: object) -> TensorSpec:
    name = arg.name  # type: ignore[attr-defined]  # onnxruntime is untyped
    ort_type = arg.type  # type: ignore[attr-defined]  # onnxruntime is untyped
    if ort_type not in ORT_TYPES:
        raise EngineLoadError(f"tensor {name!r} has type {ort_type}, which the agent does not handle")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)  # type: ignore[attr-defined]  # onnxruntime is untyped
    return TensorSpec(name, shape, np.dtype(ORT_TYPES[ort_type]))


class OnnxRuntimeEngine:
    """An InferenceSession behind the Engine protocol.

    Spinning is off: the intra-op threads sleep between frames instead of
    busy-waiting, which leaves the CPU to the capture thread and to a model
    being loaded beside this one (a swap) on a small device.
    """

    runtime = "onnxruntime"

    def __init__(self, session: object, providers: Sequence[str]) -> None:
        self._session = session
        self.providers = tuple(providers)
        self.inputs = tuple(_spec(a) for a in session.get_inputs())  # type: ignore[attr-defined]  # onnxruntime is untyped
        self.outputs = tuple(_spec(a) for a in session.get_outputs())  # type: ignore[attr-defined]  # onnxruntime is untyped
        self._output_names = [o.name for o in self.outputs]

    @classmethod
    def load(
        cls,
        model: Path | bytes,
        *,
        threads: int = 2,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        spinning: bool = False,
        optimize: bool = True,
        save_optimized: Path | None = None,
    ) -> OnnxRuntimeEngine:
        """A session on ``model``; ``optimize=False`` takes a graph ONNX Runtime optimised before
        as it is (no graph passes: a cheap load), ``save_optimized`` writes the optimised graph there."""
        import onnxruntime as ort

        known = available_providers()
        missing = [p for p in providers if p not in known]
        if missing:
            raise EngineLoadError(
                f"execution provider(s) {', '.join(missing)} not available here; available: {', '.join(known)}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                             else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        if save_optimized is not None:
            options.optimized_model_filepath = str(save_optimized)
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        source = str(model) if isinstance(model, Path) else model
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises several unrelated types for bad models
            where = model if isinstance(model, Path) else "model"
            raise EngineLoadError(f"{where}: ONNX Runtime cannot load it: {exc}") from exc
        return cls(session, providers)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feeds))  # type: ignore[attr-defined]  # onnxruntime is untyped
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._session = None
        release_freed_memory()
