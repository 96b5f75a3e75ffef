"""The runtime package.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.runtime.base import Engine, EngineError, EngineLoadError, ShapeProfile, TensorSpec
    from agent.runtime.cuda import device_memory, gpu_probe
    from agent.runtime.onnxrt import OnnxRuntimeEngine
    from agent.runtime.selection import select_runtime
    from agent.runtime.slot import EngineSlot, Serving, SlotEmptyError
    from agent.runtime.tensorrt import TensorRTEngine, import_tensorrt, make_logger

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

_HOMES = {
    "Engine": "agent.runtime.base",
    "EngineError": "agent.runtime.base",
    "EngineLoadError": "agent.runtime.base",
    "EngineSlot": "agent.runtime.slot",
    "OnnxRuntimeEngine": "agent.runtime.onnxrt",
    "Serving": "agent.runtime.slot",
    "ShapeProfile": "agent.runtime.base",
    "SlotEmptyError": "agent.runtime.slot",
    "TensorRTEngine": "agent.runtime.tensorrt",
    "TensorSpec": "agent.runtime.base",
    "device_memory": "agent.runtime.cuda",
    "gpu_probe": "agent.runtime.cuda",
    "import_tensorrt": "agent.runtime.tensorrt",
    "make_logger": "agent.runtime.tensorrt",
    "select_runtime": "agent.runtime.selection",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
