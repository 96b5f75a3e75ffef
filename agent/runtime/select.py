"""Which runtime serves: TensorRT where a GPU and TensorRT are present, else ONNX Runtime."""

from __future__ import annotations

import importlib.util

from .base import EngineLoadError

__all__ = ["select_runtime"]


def _tensorrt_ready() -> str | None:
    """None when TensorRT can be used here, else why not."""
    from .tensorrt import gpu_available

    if gpu_available() is None:
        return "no NVIDIA GPU is visible (cudaGetDeviceCount found none)"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python module is not installed"
    return None


def select_runtime(requested: str) -> str:
    """Resolve ``auto``; refuse ``tensorrt`` clearly where it cannot run."""
    if requested == "onnxruntime":
        return requested
    reason = _tensorrt_ready()
    if requested == "tensorrt":
        if reason is not None:
            raise EngineLoadError(f"runtime 'tensorrt' was asked for, but {reason}; use 'auto' or 'onnxruntime'")
        return requested
    return "onnxruntime" if reason is not None else "tensorrt"
