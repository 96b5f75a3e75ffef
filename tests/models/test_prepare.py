"""The serving graph made in a worker process (agent.models.prepare) and loaded as it is, on the real
demo detector: same outputs as the plain load, made once and found again, a bad model refused with
the worker's reason; and the loader's SCHED_IDLE handed back after the swap (agent.models.priority)."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest

from agent.models import EngineOptions, ModelStore, load_serving
from agent.models.prepare import serving_graph_path
from agent.models.priority import lowered_priority, restore_thread_priority
from agent.runtime import EngineLoadError

FRAME = np.random.default_rng(7).integers(0, 255, (1, 96, 128, 3), dtype=np.uint8)


@pytest.fixture
def installed(tmp_path, demo_dir):
    return ModelStore(tmp_path / "engines").install(demo_dir / "models" / "text-det-v4")


def output(serving) -> np.ndarray:
    return next(iter(serving.engine.infer({serving.engine.inputs[0].name: FRAME}).values()))


def test_the_prepared_graph_gives_the_plain_loads_outputs_and_is_made_once(installed):
    plain = load_serving(installed, EngineOptions())
    prepared = load_serving(installed, EngineOptions(prepare_graph=True))
    graph = serving_graph_path(installed, True, ("CPUExecutionProvider",))
    assert graph.is_file() and graph.parent.name == ".ort-cache"
    made = graph.stat().st_mtime_ns
    again = load_serving(installed, EngineOptions(prepare_graph=True))
    assert graph.stat().st_mtime_ns == made
    np.testing.assert_allclose(output(prepared), output(plain), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(output(again), output(prepared))
    assert [s.dtype for s in prepared.engine.inputs] == [np.dtype(np.uint8)]
    assert not list(graph.parent.glob(".tmp-*"))
    for serving in (plain, prepared, again):
        serving.engine.close()


def test_unfused_and_fused_graphs_are_kept_apart(installed):
    fused = serving_graph_path(installed, True, ("CPUExecutionProvider",))
    unfused = serving_graph_path(installed, False, ("CPUExecutionProvider",))
    assert fused != unfused
    serving = load_serving(installed, EngineOptions(prepare_graph=True, fuse_preprocessing=False))
    assert serving.engine.inputs[0].dtype == np.dtype(np.float32) and unfused.is_file() and not fused.exists()
    serving.engine.close()


def test_the_same_model_with_another_preprocessing_spec_gets_its_own_fused_graph(installed):
    other = installed.manifest.model_copy(update={"preprocess": installed.manifest.preprocess.model_copy(
        update={"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})})
    elsewhere = type(installed)(other, installed.path)
    providers = ("CPUExecutionProvider",)
    assert serving_graph_path(elsewhere, True, providers) != serving_graph_path(installed, True, providers)
    assert serving_graph_path(elsewhere, False, providers) == serving_graph_path(installed, False, providers)


def test_a_model_that_is_not_onnx_is_refused_with_the_workers_reason(tmp_path, demo_dir):
    folder = tmp_path / "bad"
    shutil.copytree(demo_dir / "models" / "text-det-v4", folder)
    (folder / "model.onnx").write_bytes(b"not a model at all")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {}  # the store hashes the files it is given
    (folder / "manifest.json").write_text(json.dumps(manifest))
    installed = ModelStore(tmp_path / "engines").install(folder)
    with pytest.raises(EngineLoadError, match="not an ONNX model"):
        load_serving(installed, EngineOptions(prepare_graph=True))
    assert not serving_graph_path(installed, True, ("CPUExecutionProvider",)).exists()


def test_threads_made_under_sched_idle_are_handed_back_to_the_process_policy():
    ready, done = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def child() -> None:
        seen["tid"] = threading.get_native_id()
        ready.set()
        done.wait(10.0)

    with lowered_priority(5, idle=True):
        me = threading.get_native_id()
        assert os.sched_getscheduler(me) == os.SCHED_IDLE
        thread = threading.Thread(target=child)
        thread.start()
        assert ready.wait(10.0)
    assert os.sched_getscheduler(me) == os.sched_getscheduler(os.getpid())
    assert os.sched_getscheduler(seen["tid"]) == os.SCHED_IDLE  # inherited, as ONNX Runtime's pool is
    assert restore_thread_priority() >= 1
    assert os.sched_getscheduler(seen["tid"]) == os.sched_getscheduler(os.getpid())
    assert os.getpriority(os.PRIO_PROCESS, seen["tid"]) == os.getpriority(os.PRIO_PROCESS, os.getpid())
    done.set()
    thread.join(10.0)
