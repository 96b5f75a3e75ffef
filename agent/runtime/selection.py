"""Which runtime serves: ``auto`` resolved to TensorRT where a GPU and TensorRT are there, else ONNX Runtime."""

from __future__ import annotations

import importlib.util

import structlog

from agent.runtime.base import EngineLoadError
from agent.runtime.cuda import gpu_probe
from agent.runtime.tensorrt import RUNTIME

__all__ = ["RUNTIME_CHOICES", "select_runtime"]

log = structlog.get_logger(__name__)

RUNTIME_CHOICES = ("auto", "onnxruntime", "tensorrt")
BUILDER_MODULE = "tensorrt"
"""The full TensorRT package, with the builder an ONNX model needs (the lean runtime has none)."""


def select_runtime(requested: str) -> str:
    """Resolve the configured runtime to the one that will serve.

    ``auto`` is ``tensorrt`` only where a GPU answers and the full TensorRT package
    (with its builder) is installed, else ``onnxruntime``. An explicit ``tensorrt``
    without a GPU or without TensorRT is an EngineLoadError that says which is missing.
    """
    if requested not in RUNTIME_CHOICES:
        raise ValueError(f"runtime {requested!r} is not one of {', '.join(RUNTIME_CHOICES)}")
    if requested == "onnxruntime":
        return requested
    gpu = gpu_probe()
    has_trt = importlib.util.find_spec(BUILDER_MODULE) is not None
    if requested == "auto":
        chosen = RUNTIME if (not isinstance(gpu, str) and has_trt) else "onnxruntime"
        log.info("runtime_selected", requested=requested, runtime=chosen,
                 gpu=gpu if isinstance(gpu, str) else gpu.name, tensorrt=has_trt)
        return chosen
    if isinstance(gpu, str):
        raise EngineLoadError(f"runtime 'tensorrt' needs an NVIDIA GPU with a working driver: "
                              f"{gpu}")
    if not has_trt:
        raise EngineLoadError(
            "runtime 'tensorrt' needs the TensorRT Python package; on JetPack it comes with "
            "the system (python3-libnvinfer), seen through a venv made with --system-site-packages"
        )
    return RUNTIME
