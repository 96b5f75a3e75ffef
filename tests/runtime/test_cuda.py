"""GPU detection and runtime selection on this very machine, nothing mocked.

On a machine without an NVIDIA driver (CI, a developer laptop) cuda-python's
``cudaGetDeviceCount`` answers with an error code; the agent must say "no GPU"
and carry on with ONNX Runtime. On a machine with a GPU the same calls must
describe it.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import TensorRTEngine, select_runtime
from agent.runtime.base import EngineLoadError
from agent.runtime.cuda import (
    CudaError,
    CudaPythonMemory,
    GpuInfo,
    device_memory,
    gpu_available,
    gpu_probe,
)


def cuda_runtime_module() -> str | None:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except ModuleNotFoundError:
            continue
    return None


CUDA_PYTHON = cuda_runtime_module()
GPU = gpu_available()
no_gpu_here = pytest.mark.skipif(GPU is not None, reason=f"this machine has a GPU: {GPU}")


class Untouchable:
    """Stands where the TensorRT module would be; any use of it fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"TensorRT was touched ({name}) before the GPU check")


@no_gpu_here
@pytest.mark.skipif(CUDA_PYTHON is None, reason="cuda-python is not installed "
                    "(pip install cuda-python)")
def test_cuda_python_reports_no_gpu_without_raising():
    runtime = importlib.import_module(CUDA_PYTHON)
    err, count = runtime.cudaGetDeviceCount()
    assert err != runtime.cudaError_t.cudaSuccess or count == 0
    reason = gpu_probe()
    assert isinstance(reason, str)
    assert reason.startswith("cuda-python: ")
    assert gpu_available() is None
    assert device_memory() is None


@no_gpu_here
@pytest.mark.skipif(CUDA_PYTHON is None, reason="cuda-python is not installed "
                    "(pip install cuda-python)")
def test_cuda_python_memory_turns_failed_calls_into_named_errors():
    memory = CudaPythonMemory(importlib.import_module(CUDA_PYTHON))
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaError\w+"):
        memory.device_alloc(1024)
    with pytest.raises(CudaError, match=r"cudaMallocHost failed"):
        memory.pinned_empty((1, 3, 8, 8), np.dtype(np.float32))
    with pytest.raises(CudaError, match=r"cudaMemGetInfo failed"):
        memory.mem_info()
    with pytest.raises(CudaError, match="not one of ours"):
        memory.free_pinned(np.zeros(4, np.float32))


@no_gpu_here
def test_without_a_gpu_the_probe_says_why_and_device_memory_is_unknown():
    reason = gpu_probe()
    assert isinstance(reason, str) and reason
    assert gpu_available() is None
    assert device_memory() is None


@no_gpu_here
def test_auto_resolves_to_onnxruntime_without_a_gpu():
    assert select_runtime("auto") == "onnxruntime"
    assert select_runtime("onnxruntime") == "onnxruntime"


@no_gpu_here
def test_choosing_tensorrt_without_a_gpu_is_a_clear_load_error():
    with pytest.raises(EngineLoadError, match="needs an NVIDIA GPU with a working driver"):
        select_runtime("tensorrt")


def test_an_unknown_runtime_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'tensorflow' is not one of auto, onnxruntime, tensorrt"):
        select_runtime("tensorflow")


@no_gpu_here
def test_loading_an_engine_without_a_gpu_fails_before_any_tensorrt_object(tmp_path: Path):
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"a plan that must never reach TensorRT")
    with pytest.raises(EngineLoadError, match="needs an NVIDIA GPU"):
        TensorRTEngine.load(plan, tensorrt=Untouchable())  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(GPU is None, reason=f"no GPU: {gpu_probe()}")
def test_with_a_gpu_the_probe_describes_it():
    assert isinstance(GPU, GpuInfo)
    assert GPU.count >= 1 and GPU.compute_capability[0] >= 5
    free, total = device_memory()  # type: ignore[misc]
    assert 0 < free <= total


def test_gpu_info_validates_itself():
    assert GpuInfo("Orin", (8, 7), 1).sm == "8.7"
    with pytest.raises(ValueError, match="name"):
        GpuInfo("", (8, 7), 1)
    with pytest.raises(ValueError, match="count"):
        GpuInfo("Orin", (8, 7), 0)
