"""A deployment on the TensorRT runtime: build step, engine cache, swap — against the test double.

No GPU here: tests/support/trt_double.py stands in for the TensorRT module and the CUDA device
(it runs the real models through ONNX Runtime behind TensorRT's API). What this pins
down is the wiring: the manager reports `building`, the loader fuses preprocessing,
builds through the engine cache in a worker process and serves the engine.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.core.config import DeploySection, SourceSection
from agent.models import engine_cache
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeploymentManager, DeployRequest
from agent.models.probation import Probation
from agent.models.store import ModelStore
from agent.monitor.latency import LatencyRecorder
from agent.runtime import selection as runtime_selection
from agent.runtime import tensorrt as trt_runtime
from agent.runtime.cuda import GpuInfo
from agent.runtime.slot import EngineSlot
from agent.vision.pipeline import Pipeline
from agent.vision.sources import FrameSource
from agent.wire import DeploymentState
from tests.support import trt_double
from tests.support.artifacts import bundle_of, sha256

PLATFORM = engine_cache.Platform(trt_double.__version__, "Orin (test double)", "8.7")
OPTIONS = EngineOptions(runtime="tensorrt", tensorrt_module="tests.support.trt_double",
                        tensorrt_shapes=("x:1x480x640x3",))


@pytest.fixture
def double_gpu(monkeypatch):
    memory = trt_double.FakeCudaMemory()
    trt_double.attach(memory)
    monkeypatch.setattr(runtime_selection, "gpu_probe", lambda: GpuInfo("Orin (test double)", (8, 7), 1))
    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda *a, **k: trt_double)
    monkeypatch.setattr(trt_runtime, "open_cuda_memory", lambda: memory)
    monkeypatch.setattr(engine_cache.Platform, "current", classmethod(lambda cls, module="tensorrt": PLATFORM))
    yield memory
    trt_double.attach(None)


def test_deploy_builds_an_engine_swaps_it_in_and_a_second_load_hits_the_cache(tmp_path, demo_dir, double_gpu):
    store = ModelStore(tmp_path / "engines")
    store.install(demo_dir / "models" / "text-det-v4")
    bundle = bundle_of(demo_dir, "text-det-v6", tmp_path)

    async def scenario():
        slot = EngineSlot()
        slot.swap(load_serving(store.current("text-det"), OPTIONS))
        source = FrameSource(SourceSection(uri=str(demo_dir / "video.mp4"), pace="none"))
        versions: list[str] = []
        pipeline = Pipeline(source, slot, LatencyRecorder(50), observers=[lambda r: versions.append(r.version)])
        reports = []

        async def report(status):
            reports.append(status.state)

        async def swapped(*_):
            return None

        manager = DeploymentManager(
            store=store, slot=slot, options=OPTIONS,
            settings=DeploySection(latency_budget_ms=60_000.0, file_roots=(tmp_path,)),
            public_key=None, feeds_for=pipeline.feeds_for, stats=pipeline.counters.stats,
            report=report, swapped=swapped)
        source.start()
        pipeline.start()
        while len(versions) < 2:
            await asyncio.sleep(0.05)
        try:
            new = await manager.deploy(DeployRequest("text-det", "v6", bundle.as_uri(), sha256(bundle),
                                                     format="bundle", probation=Probation(3600, 1, 0, 100)))
            count = len(versions)
            while len(versions) < count + 2:
                await asyncio.sleep(0.05)
        finally:
            manager.close()
            pipeline.stop(10)
            source.stop()
            slot.clear()
            slot.drain()
        return new, reports, versions

    new, reports, versions = asyncio.run(scenario())
    assert new.runtime == "tensorrt"
    building, loading = DeploymentState.BUILDING, DeploymentState.LOADING
    assert building in reports and reports.index(building) < reports.index(loading)
    assert versions[-1] == "v6" and versions[0] == "v4"
    cache = list((tmp_path / "engines" / ".engine-cache").glob("*.engine"))
    assert len(cache) == 2  # one engine per model, each built once
    again = load_serving(store.get("text-det", "v6"), OPTIONS)
    assert again.engine.inputs[0].dtype.name == "uint8"  # frames go in as they come; normalised on the GPU
    again.engine.close()
    assert len(list((tmp_path / "engines" / ".engine-cache").glob("*.engine"))) == 2
