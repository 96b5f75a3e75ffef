"""TensorRTEngine's own logic against the TensorRT/CUDA double (tests/support/trt_double.py).

The double runs the real demo models through ONNX Runtime behind TensorRT's API
and a fake device whose copies happen only at stream synchronization; what is
pinned down here is the adapter's work: shapes and profiles, buffer lifetime,
copies, and errors that name what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from agent.runtime.base import Engine, EngineError, EngineLoadError
from agent.runtime.tensorrt import TensorRTEngine
from tests.support import trt_double

DEMO = Path(__file__).resolve().parents[2] / "demo"
TEXT_DET = DEMO / "models" / "text-det-v4" / "model.onnx"
ORIENTATION = DEMO / "models" / "orientation-0.0.11" / "model.onnx"
TEXT_PROFILE = [[1, 3, 32, 32], [1, 3, 64, 96], [1, 3, 128, 160]]
ORIENTATION_PROFILE = [[1, 3, 224, 224]] * 3

pytestmark = pytest.mark.skipif(not TEXT_DET.is_file(), reason="demo models missing: make setup")


@pytest.fixture
def device() -> Iterator[trt_double.FakeCudaMemory]:
    memory = trt_double.FakeCudaMemory()
    trt_double.attach(memory)
    yield memory
    trt_double.attach(None)


def write_plan(folder: Path, model: Path, profile: list[list[int]], name: str) -> Path:
    path = folder / f"{name}.engine"
    path.write_bytes(trt_double.make_plan(model.read_bytes(), profile={"x": profile}))
    return path


@pytest.fixture
def text_det(tmp_path: Path, device: trt_double.FakeCudaMemory) -> Iterator[TensorRTEngine]:
    engine = TensorRTEngine.load(write_plan(tmp_path, TEXT_DET, TEXT_PROFILE, "text"),
                                 tensorrt=trt_double, memory=device)
    yield engine
    engine.close()


def frame(height: int, width: int, image: str = "page.png") -> np.ndarray:
    """A real demo photo as the DB detector wants it: RGB, (x/255 - 0.5)/0.5, NCHW."""
    bgr = cv2.imread(str(DEMO / "images" / image))
    assert bgr is not None, f"cannot read demo image {image}"
    rgb = cv2.cvtColor(cv2.resize(bgr, (width, height)), cv2.COLOR_BGR2RGB)
    return ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_engine_describes_its_tensors_and_the_profile_of_dynamic_inputs(text_det):
    assert isinstance(text_det, Engine)
    assert text_det.runtime == "tensorrt"
    (x,) = text_det.inputs
    (prob,) = text_det.outputs
    assert (x.name, x.shape, x.dtype) == ("x", (None, 3, None, None), np.dtype(np.float32))
    assert (prob.name, prob.shape) == ("sigmoid_0.tmp_0", (None, 1, None, None))
    profile = text_det.profiles["x"]
    assert (profile.min, profile.opt, profile.max) == tuple(tuple(s) for s in TEXT_PROFILE)


def test_probability_map_of_a_real_photo_matches_onnx_runtime(text_det):
    x = frame(128, 160)
    out = text_det.infer({"x": x})
    assert set(out) == {"sigmoid_0.tmp_0"}
    np.testing.assert_array_equal(out["sigmoid_0.tmp_0"], reference(TEXT_DET, x))
    assert out["sigmoid_0.tmp_0"].max() > 0.5, "the page photo should light up the text map"


def test_buffers_are_allocated_once_per_shape_and_replaced_on_a_new_shape(text_det, device):
    small, large = frame(64, 96), frame(128, 160)
    for _ in range(3):
        text_det.infer({"x": small})
    assert device.counts["device_alloc"] == 2 and device.counts["device_free"] == 0
    assert device.counts["pinned_alloc"] == 2
    small_bytes = text_det.buffer_bytes
    assert small_bytes == small.nbytes + small.nbytes // 3

    out = text_det.infer({"x": large})
    assert out["sigmoid_0.tmp_0"].shape == (1, 1, 128, 160)
    assert device.counts["device_alloc"] == 4 and device.counts["device_free"] == 2
    assert device.counts["pinned_free"] == 2
    assert len(device.allocations) == 2
    assert text_det.buffer_bytes == large.nbytes + large.nbytes // 3
    assert device.live_bytes == text_det.buffer_bytes


def test_outputs_are_copies_that_stay_valid_after_the_next_frame(text_det):
    first = text_det.infer({"x": frame(64, 96, "page.png")})["sigmoid_0.tmp_0"]
    kept = first.copy()
    second = text_det.infer({"x": frame(64, 96, "coffee.png")})["sigmoid_0.tmp_0"]
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)


def test_a_shape_outside_the_profile_is_refused_naming_the_dimension(text_det, device):
    with pytest.raises(EngineError, match=r"dim 2 = 256, allowed 32\.\.128") as caught:
        text_det.infer({"x": np.zeros((1, 3, 256, 96), np.float32)})
    assert "optimization profile" in str(caught.value)
    assert device.counts["device_alloc"] == 0
    ok = text_det.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})
    assert ok["sigmoid_0.tmp_0"].shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, r"missing \['x'\]"),
        ({"x": np.zeros((1, 3, 64, 64), np.float32), "y": np.zeros(1)}, r"unknown \['y'\]"),
        ({"x": np.zeros((1, 3, 64, 64), np.float64)}, "dtype float64, the engine wants float32"),
        ({"x": np.zeros((3, 64, 64), np.float32)}, "rank 3"),
        ({"x": np.zeros((1, 4, 64, 64), np.float32)}, "dim 1 is 4, the engine wants 3"),
    ],
)
def test_bad_feeds_are_refused_with_what_is_wrong(text_det, device, feeds, message):
    with pytest.raises(EngineError, match=message):
        text_det.infer(feeds)
    assert device.counts["device_alloc"] == 0


def test_close_frees_everything_exactly_once(text_det, device):
    text_det.infer({"x": frame(64, 96)})
    text_det.infer({"x": frame(128, 128)})
    text_det.close()
    assert text_det.closed
    assert device.allocations == {} and device.pinned == {} and device.streams == {}
    counts = dict(device.counts)
    assert counts["device_free"] == counts["device_alloc"] == 4
    assert counts["pinned_free"] == counts["pinned_alloc"] == 4
    assert counts["stream_destroy"] == counts["stream_create"] == 1
    text_det.close()
    assert device.counts == counts
    with pytest.raises(EngineError, match="closed"):
        text_det.infer({"x": frame(64, 96)})


def test_swapping_engines_gives_the_old_engines_device_memory_back(tmp_path, device):
    free_at_start, total = device.mem_info()
    old = TensorRTEngine.load(write_plan(tmp_path, TEXT_DET, TEXT_PROFILE, "text"),
                              tensorrt=trt_double, memory=device)
    old.infer({"x": frame(128, 160)})
    new = TensorRTEngine.load(write_plan(tmp_path, ORIENTATION, ORIENTATION_PROFILE, "orient"),
                              tensorrt=trt_double, memory=device)
    scores = new.infer({"x": np.zeros((1, 3, 224, 224), np.float32)})["fetch_name_0"]
    assert scores.shape == (1, 4)
    both, held = device.mem_info()[0], old.buffer_bytes
    assert held > 0
    old.close()
    assert device.mem_info()[0] == both + held
    new.close()
    assert device.mem_info() == (free_at_start, total)


def test_a_static_batch_profile_refuses_a_larger_batch(tmp_path, device):
    engine = TensorRTEngine.load(write_plan(tmp_path, ORIENTATION, ORIENTATION_PROFILE, "o"),
                                 tensorrt=trt_double, memory=device)
    try:
        with pytest.raises(EngineError, match=r"dim 0 = 2, allowed 1\.\.1"):
            engine.infer({"x": np.zeros((2, 3, 224, 224), np.float32)})
    finally:
        engine.close()


def test_a_plan_tensorrt_cannot_read_is_a_load_error_with_its_message(tmp_path, device):
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineLoadError, match=r"could not deserialize.*magicTagRead"):
        TensorRTEngine.load(garbage, tensorrt=trt_double, memory=device)
    other = tmp_path / "other-version.engine"
    other.write_bytes(trt_double.make_plan(ORIENTATION.read_bytes(), version="10.3.0"))
    with pytest.raises(EngineLoadError, match=r"version tag 10\.3\.0"):
        TensorRTEngine.load(other, tensorrt=trt_double, memory=device)
    assert device.streams == {} and device.allocations == {}


def test_a_missing_engine_file_is_a_load_error(tmp_path, device):
    with pytest.raises(EngineLoadError, match="cannot read engine"):
        TensorRTEngine.load(tmp_path / "nope.engine", tensorrt=trt_double, memory=device)


class FailingContext(trt_double.IExecutionContext):
    def execute_async_v3(self, stream_handle: int) -> bool:
        return self._error("IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime "
                           "(an illegal memory access was encountered)")


class FailingRuntime(trt_double.Runtime):
    def deserialize_cuda_engine(self, serialized_engine: bytes) -> trt_double.ICudaEngine | None:
        engine = super().deserialize_cuda_engine(serialized_engine)
        assert engine is not None
        engine.create_execution_context = lambda strategy=None: FailingContext(engine)
        return engine


def test_a_failed_enqueue_reports_tensorrts_message_and_leaves_no_work_behind(tmp_path, device):
    trt = trt_double.flavour(trt_double.__version__)
    trt.Runtime = FailingRuntime
    engine = TensorRTEngine.load(write_plan(tmp_path, TEXT_DET, TEXT_PROFILE, "text"),
                                 tensorrt=trt, memory=device)
    with pytest.raises(EngineError, match=r"execute_async_v3 failed: .*illegal memory access"):
        engine.infer({"x": frame(64, 96)})
    assert all(work == [] for work in device.streams.values())
    engine.close()
    assert device.allocations == {} and device.pinned == {} and device.streams == {}


BATCH_PROFILE = [[1, 3, 32, 32], [2, 3, 64, 96], [4, 3, 64, 96]]
IMAGES = ("page.png", "coffee.png", "chelsea.png", "text.png")


def test_a_dynamic_batch_profile_serves_every_batch_up_to_its_max_from_one_allocation(tmp_path, device):
    from agent.vision.pipeline import batch_limit

    engine = TensorRTEngine.load(write_plan(tmp_path, TEXT_DET, BATCH_PROFILE, "batched"),
                                 tensorrt=trt_double, memory=device)
    session = ort.InferenceSession(str(TEXT_DET), providers=["CPUExecutionProvider"])
    frames = [frame(64, 96, image) for image in IMAGES]
    alone = [session.run(None, {"x": f})[0] for f in frames]
    try:
        assert batch_limit(engine, "x", engine.inputs[0].shape) == 4
        for size in (1, 3, 2, 4, 1):
            out = engine.infer({"x": np.concatenate(frames[:size])})["sigmoid_0.tmp_0"]
            assert out.shape == (size, 1, 64, 96)
            for k in range(size):
                np.testing.assert_allclose(out[k : k + 1], alone[k], atol=1e-5)
        assert device.counts["device_alloc"] == 2 and device.counts["device_free"] == 0
        assert engine.buffer_bytes == 4 * (frames[0].nbytes + frames[0].nbytes // 3)
        with pytest.raises(EngineError, match=r"dim 0 = 5, allowed 1\.\.4"):
            engine.infer({"x": np.concatenate(frames + frames[:1])})
        engine.infer({"x": frame(32, 32)})  # another height and width: buffers made anew
        assert device.counts["device_alloc"] == 4 and device.counts["device_free"] == 2
    finally:
        engine.close()
