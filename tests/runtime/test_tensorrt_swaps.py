"""Many hot swaps of TensorRT engines through the real slot, on the TensorRT/CUDA double
(tests/support/trt_double.py: a fake device, no GPU): the device memory is back to where it
started after every close, and nothing (buffers, pinned memory, streams) outlives its engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.runtime import EngineSlot, Serving
from agent.runtime.tensorrt import TensorRTEngine
from tests.runtime.test_tensorrt_runtime import ORIENTATION, TEXT_DET, device, pytestmark
from tests.support import trt_double

__all__ = ["device", "pytestmark"]  # the fixture and the demo-models skip, shared with the runtime tests

SWAPS = 10


def plans(folder: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    text = folder / "text.engine"
    text.write_bytes(trt_double.make_plan(TEXT_DET.read_bytes(),
                                          profile={"x": [[1, 3, 32, 32], [1, 3, 64, 96], [1, 3, 128, 160]]}))
    orient = folder / "orient.engine"
    orient.write_bytes(trt_double.make_plan(ORIENTATION.read_bytes(), profile={"x": [[1, 3, 224, 224]] * 3}))
    return {"text": (text, {"x": np.zeros((1, 3, 64, 96), np.float32)}),
            "orient": (orient, {"x": np.zeros((1, 3, 224, 224), np.float32)})}


def test_device_memory_is_back_to_its_start_after_each_close_over_many_swaps(tmp_path, device):
    made = plans(tmp_path)
    start = device.mem_info()
    slot = EngineSlot()
    for i in range(SWAPS):
        name = "text" if i % 2 == 0 else "orient"
        path, feeds = made[name]
        engine = TensorRTEngine.load(path, tensorrt=trt_double, memory=device)
        engine.infer(feeds)
        slot.swap(Serving(engine=engine, name=name, version=str(i), sha256="", manifest=None))
        with slot.lease() as serving:  # a frame on the new engine, the old one closing meanwhile
            serving.engine.infer(feeds)
        assert slot.drain()
        held = engine.buffer_bytes
        assert held > 0
        assert device.mem_info()[0] == start[0] - held, f"swap {i}: the old engine's device memory is not back"
        assert len(device.streams) == 1
    slot.clear()
    assert slot.drain()
    assert device.mem_info() == start
    assert device.allocations == {} and device.pinned == {} and device.streams == {}
    assert device.counts["device_alloc"] == device.counts["device_free"]
    assert device.counts["stream_create"] == device.counts["stream_destroy"] == SWAPS
