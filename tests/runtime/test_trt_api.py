"""The adapter and the test double against the real TensorRT Python API, without a GPU.

The runtime classes are inspected on the real module (``tensorrt``, or the lean
runtime ``tensorrt_lean`` from ``pip install tensorrt-lean-cu12``), without making
a Runtime: every name the double offers, and so every name the adapter can use,
must exist there with the same parameter names. The builder classes are not in
the lean runtime; where the full bindings wheel is installed
(``tensorrt-cu12-bindings``, whose library cannot load without TensorRT's shared
libraries) its compiled module is searched for the names instead.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import trt_double

ROOT = Path(__file__).resolve().parents[2]
ADAPTER_SOURCES = [ROOT / "agent" / "runtime" / "tensorrt.py",
                   ROOT / "agent" / "models" / "build.py"]
RUNTIME_CLASSES = ["Runtime", "ICudaEngine", "IExecutionContext", "ILogger"]
BUILDER_CLASSES = ["Builder", "IBuilderConfig", "OnnxParser", "IOptimizationProfile",
                   "ITimingCache", "IHostMemory"]
BUILDER_ENUMS = ["BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DeviceType"]
REMOVED = ["execute_async_v2", "execute_async", "get_binding_index", "get_binding_shape",
           "get_binding_dtype", "binding_is_input", "num_bindings", "build_engine",
           "max_workspace_size", "set_binding_shape", "max_batch_size"]
USED_BY_ADAPTER = {
    "Runtime": ["deserialize_cuda_engine", "DLA_core"],
    "ICudaEngine": ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape",
                    "get_tensor_dtype", "get_tensor_profile_shape", "is_shape_inference_io",
                    "create_execution_context"],
    "IExecutionContext": ["set_input_shape", "get_tensor_shape", "set_tensor_address",
                          "execute_async_v3"],
    "IProgressMonitor": ["phase_start", "step_complete", "phase_finish"],
}


def real_tensorrt() -> ModuleType:
    reasons = []
    for name in ("tensorrt", "tensorrt_lean"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            reasons.append(f"{name}: {exc}")
    pytest.skip("no TensorRT Python module (pip install tensorrt-lean-cu12): " + "; ".join(reasons))


SAMPLES = {
    "Runtime": lambda: trt_double.Runtime(trt_double.ILogger()),
    "Builder": lambda: trt_double.Builder(trt_double.ILogger()),
    "IBuilderConfig": trt_double.IBuilderConfig,
}


def public(cls: type) -> set[str]:
    """Public names of a double class, with the attributes its instances set."""
    names = {name for name in vars(cls) if not name.startswith("_")}
    if cls.__name__ in SAMPLES:
        names |= {name for name in vars(SAMPLES[cls.__name__]()) if not name.startswith("_")}
    return names


def parameter_sets(doc: str, name: str) -> list[list[str]]:
    """Parameter names of each overload in a pybind11 docstring, ``self`` dropped."""
    found = []
    for match in re.finditer(rf"^(?:\d+\. )?{name}\((.*)\) ->", doc, re.MULTILINE):
        params = [p.split(":")[0].strip() for p in match.group(1).split(", ") if ":" in p]
        found.append([p for p in params if p != "self"])
    return found


def test_the_real_runtime_classes_have_every_name_the_adapter_uses():
    trt = real_tensorrt()
    assert int(trt.__version__.split(".")[0]) >= 10
    for cls, names in USED_BY_ADAPTER.items():
        missing = [n for n in names if not hasattr(getattr(trt, cls), n)]
        assert missing == [], f"{trt.__name__} {trt.__version__}: {cls} lacks {missing}"
    assert {"INTERNAL_ERROR", "ERROR", "WARNING"} <= set(trt.ILogger.Severity.__members__)
    assert trt.TensorIOMode.INPUT != trt.TensorIOMode.OUTPUT
    assert trt.nptype(trt.DataType.FLOAT).__name__ == "float32"
    with pytest.raises(TypeError):
        trt.nptype(trt.DataType.BF16)


def test_every_name_of_the_double_exists_in_the_real_runtime_classes():
    trt = real_tensorrt()
    for cls in RUNTIME_CLASSES:
        extra = sorted(public(getattr(trt_double, cls)) - set(dir(getattr(trt, cls))))
        assert extra == [], f"the double's {cls} has names TensorRT lacks: {extra}"
    for enum_name in ("TensorIOMode", "DataType"):
        double = set(getattr(trt_double, enum_name).__members__)
        assert double <= set(getattr(trt, enum_name).__members__), enum_name


def test_the_doubles_methods_take_the_real_parameter_names():
    trt = real_tensorrt()
    checked = 0
    for cls in ["Runtime", "ICudaEngine", "IExecutionContext"]:
        for name in sorted(public(getattr(trt_double, cls))):
            ours = getattr(getattr(trt_double, cls), name, None)
            if ours is None or isinstance(ours, property) or not callable(ours):
                continue
            theirs = parameter_sets(getattr(getattr(trt, cls), name).__doc__ or "", name)
            mine = [p for p in inspect.signature(ours).parameters if p != "self"]
            assert mine in theirs, f"{cls}.{name}{tuple(mine)}; TensorRT has {theirs}"
            checked += 1
    assert checked >= 10


def test_the_removed_binding_api_is_gone_and_unused():
    trt = real_tensorrt()
    for cls in ("ICudaEngine", "IExecutionContext"):
        present = [n for n in REMOVED if hasattr(getattr(trt, cls), n)]
        assert present == [], f"{cls} still has {present}"
    for source in ADAPTER_SOURCES:
        text = source.read_text(encoding="utf-8")
        used = [n for n in REMOVED if re.search(rf"\.{n}\b", text)]
        assert used == [], f"{source.name} uses removed TensorRT API {used}"


def bindings_identifiers() -> set[str]:
    try:
        dist = metadata.distribution("tensorrt_cu12_bindings")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-cu12-bindings not installed (pip install --no-deps "
                    "tensorrt-cu12-bindings)")
    library = Path(str(dist.locate_file("tensorrt_bindings/tensorrt.so")))
    if not library.is_file():
        pytest.skip(f"{library} missing from the installed bindings")
    return set(re.findall(rb"[A-Za-z_][A-Za-z0-9_]{2,}", library.read_bytes()))


def test_every_builder_name_of_the_double_is_in_the_real_bindings():
    names = {n.decode() for n in bindings_identifiers()}
    wanted = {cls: public(getattr(trt_double, cls)) | {cls} for cls in BUILDER_CLASSES}
    for enum_name in BUILDER_ENUMS:
        wanted[enum_name] = set(getattr(trt_double, enum_name).__members__) | {enum_name}
    missing = {cls: sorted(want - names) for cls, want in wanted.items() if want - names}
    assert missing == {}
    assert "IProgressMonitor" in names and "progress_monitor" in names
