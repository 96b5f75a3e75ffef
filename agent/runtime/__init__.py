"""The runtime package."""

from __future__ import annotations

from agent.runtime.base import Engine, EngineError, EngineLoadError, TensorSpec
from agent.runtime.cuda import device_memory, gpu_probe
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.runtime.slot import EngineSlot, Serving, SlotEmptyError
from agent.runtime.tensorrt import ShapeProfile, TensorRTEngine, import_tensorrt, make_logger, select_runtime

__all__ = [
    "Engine",
    "EngineError",
    "EngineLoadError",
    "EngineSlot",
    "OnnxRuntimeEngine",
    "Serving",
    "ShapeProfile",
    "SlotEmptyError",
    "TensorRTEngine",
    "TensorSpec",
    "device_memory",
    "gpu_probe",
    "import_tensorrt",
    "make_logger",
    "select_runtime",
]
