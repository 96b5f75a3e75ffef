"""Real TensorRT on a real GPU: build, cache, load, infer, swap; compared with ONNX Runtime.

Skipped without an NVIDIA GPU or without the full TensorRT package. On a Jetson
(JetPack 6, venv made with --system-site-packages, see docs/jetson.md)::

    python -m pytest -m gpu tests/runtime/test_tensorrt_gpu.py tests/runtime/test_cuda.py -q

Error bounds are relative L2 errors against ONNX Runtime on the CPU, per precision:
fp32 is tight (TensorRT may still use TF32 on Ampere and later), fp16 looser, int8
(an explicitly quantized copy, compared with ONNX Runtime running that same copy)
loosest.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.models.build import ensure_engine
from agent.models.build_spec import BuildSpec, parse_shape
from agent.models.engine_cache import EngineCache, Platform
from agent.runtime.cuda import device_memory, gpu_available, gpu_probe
from agent.runtime.tensorrt import TensorRTEngine

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo"
TEXT_DET = DEMO / "models" / "text-det-v4" / "model.onnx"
ORIENTATION = DEMO / "models" / "orientation-0.0.11" / "model.onnx"
TEXT_SHAPE = "x:1x3x32x32:1x3x480x640:1x3x960x960"
FP32_MAX_REL_ERROR = 5e-3
FP16_MAX_REL_ERROR = 3e-2
INT8_MAX_REL_ERROR = 1.5e-1
SWAP_MEMORY_SLACK = 64 << 20
"""Device memory other processes may take meanwhile (Jetson shares it with the system)."""
BUILD_TIMEOUT_S = 1800
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

GPU = gpu_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(BUILD_TIMEOUT_S),
    pytest.mark.skipif(GPU is None, reason=f"no GPU: {gpu_probe()}"),
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                       reason="the full TensorRT Python package (with the builder) is missing"),
    pytest.mark.skipif(not TEXT_DET.is_file(), reason="demo models missing: make setup"),
]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-12))


def text_frame(image: str, height: int, width: int) -> np.ndarray:
    rgb = cv2.cvtColor(cv2.resize(cv2.imread(str(DEMO / "images" / image)), (width, height)),
                       cv2.COLOR_BGR2RGB)
    return ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()


def orientation_frame(image: str) -> np.ndarray:
    bgr = cv2.imread(str(DEMO / "images" / image))
    scale = 256 / min(bgr.shape[:2])
    resized = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)))
    top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    rgb = cv2.cvtColor(resized[top:top + 224, left:left + 224], cv2.COLOR_BGR2RGB)
    normal = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return normal.transpose(2, 0, 1)[None].astype(np.float32).copy()


def onnxruntime_output(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> EngineCache:
    return EngineCache.in_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def text_engine(cache: EngineCache) -> Iterator[TensorRTEngine]:
    built = ensure_engine(TEXT_DET, BuildSpec(shapes=dict([parse_shape(TEXT_SHAPE)])), cache)
    engine = TensorRTEngine.load(built.path)
    yield engine
    engine.close()


@pytest.mark.parametrize(("image", "height", "width"),
                         [("page.png", 480, 640), ("text.png", 480, 640), ("page.png", 320, 320)])
def test_text_detector_fp32_matches_onnxruntime(text_engine, image, height, width):
    x = text_frame(image, height, width)
    got = text_engine.infer({"x": x})["sigmoid_0.tmp_0"]
    want = onnxruntime_output(TEXT_DET, x)
    assert got.shape == want.shape == (1, 1, height, width)
    assert relative_error(got, want) < FP32_MAX_REL_ERROR


def test_a_second_build_hits_the_cache_with_this_devices_key(cache, text_engine):
    again = ensure_engine(TEXT_DET, BuildSpec(shapes=dict([parse_shape(TEXT_SHAPE)])), cache)
    assert again.cached and again.path == text_engine.path
    platform = Platform.current()
    assert again.key.platform == platform
    assert (platform.gpu_name, platform.compute_capability) == (GPU.name, GPU.sm)


def test_orientation_fp16_matches_onnxruntime(cache):
    import tensorrt as trt

    if "FP16" not in trt.BuilderFlag.__members__:
        pytest.skip(f"TensorRT {trt.__version__} has no FP16 flag; fp16 needs an fp16 model")
    built = ensure_engine(ORIENTATION, BuildSpec(precision="fp16"), cache)
    engine = TensorRTEngine.load(built.path)
    try:
        for image in ("page.png", "astronaut.png", "coffee.png"):
            x = orientation_frame(image)
            got = engine.infer({"x": x})["fetch_name_0"]
            assert relative_error(got, onnxruntime_output(ORIENTATION, x)) < FP16_MAX_REL_ERROR
    finally:
        engine.close()


def quantized_orientation(folder: Path) -> Path:
    """An explicitly quantized (Q/DQ) copy, calibrated on the demo photos.

    Symmetric signed int8 for weights and activations (TensorRT takes Q/DQ with a
    zero point of 0 only), on the inputs of convolutions and matrix products, as
    TensorRT's explicit quantization expects; biases stay float.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            names = ("astronaut.png", "chelsea.png", "coffee.png", "page.png", "text.png")
            self._feeds = iter([{"x": orientation_frame(n)} for n in names])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    fixed = folder / "orientation-static.onnx"
    model = onnx.load(str(ORIENTATION))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(fixed))
    target = folder / "orientation-int8.onnx"
    quantize_static(str(fixed), str(target), Photos(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True, op_types_to_quantize=["Conv", "MatMul"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False})
    return target


def test_orientation_int8_from_qdq_matches_onnxruntime(cache, tmp_path):
    qdq = quantized_orientation(tmp_path)
    built = ensure_engine(qdq, BuildSpec(precision="int8"), cache)
    assert built.key.precision == "int8"
    engine = TensorRTEngine.load(built.path)
    try:
        for image in ("page.png", "astronaut.png", "rocket.jpg"):
            x = orientation_frame(image)
            got = engine.infer({"x": x})["fetch_name_0"]
            assert relative_error(got, onnxruntime_output(qdq, x)) < INT8_MAX_REL_ERROR
    finally:
        engine.close()


def test_swapping_engines_gives_device_memory_back(cache):
    free_before, _ = device_memory()  # type: ignore[misc]
    old_built = ensure_engine(TEXT_DET, BuildSpec(shapes=dict([parse_shape(TEXT_SHAPE)])), cache)
    new_built = ensure_engine(ORIENTATION, BuildSpec(), cache)
    old = TensorRTEngine.load(old_built.path)
    old.infer({"x": text_frame("page.png", 960, 960)})
    new = TensorRTEngine.load(new_built.path)
    new.infer({"x": orientation_frame("coffee.png")})
    assert old.buffer_bytes > 0
    old.close()
    new.close()
    free_after, _ = device_memory()  # type: ignore[misc]
    assert free_after >= free_before - SWAP_MEMORY_SLACK


def test_the_cli_builds_then_finds_the_engine_in_the_cache(tmp_path):
    command = [sys.executable, "-m", "agent.cli.build", str(TEXT_DET), "--store",
               str(tmp_path), "--shape", "x:1x3x32x32:1x3x320x320:1x3x640x640"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("built ")
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert second.returncode == 0 and second.stdout.startswith("cached ")
