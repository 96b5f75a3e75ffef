"""Engine builds: the request checked against the model, the TensorRT calls (against the
double in tests/support/trt_double.py), the worker process, the cache, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.cli.build import main
from agent.models.build import (
    BuildError,
    BuildJob,
    BuildProgress,
    build_plan,
    ensure_engine,
    run_build_worker,
)
from agent.models.build_spec import (
    BuildSpec,
    BuildSpecError,
    model_inputs,
    model_precision,
    parse_precision,
    parse_shape,
    plan_precision,
    profile_text,
    resolve_profiles,
    target_precision,
)
from agent.models.engine_cache import EngineCache, Platform
from agent.models.sparsity import prune_model_2to4
from agent.runtime import ShapeProfile, TensorRTEngine
from agent.runtime.cuda import gpu_available
from tests.support import trt_double

MODELS = Path(__file__).resolve().parents[2] / "demo" / "models"
TEXT_DET = MODELS / "text-det-v4" / "model.onnx"
ORIENTATION = MODELS / "orientation-0.0.11" / "model.onnx"
TEXT_SHAPE = "x:1x3x32x32:1x3x64x96:1x3x128x160"
PLATFORM = Platform(trt_double.__version__, "Orin (test double)", "8.7")
DOUBLE = "tests.support.trt_double"

needs_demo = pytest.mark.skipif(not TEXT_DET.is_file(), reason="demo models missing: make setup")


def text_spec(**changes: object) -> BuildSpec:
    return BuildSpec(shapes=dict([parse_shape(TEXT_SHAPE)]), **changes)  # type: ignore[arg-type]


def job(tmp_path: Path, model: Path = TEXT_DET, **changes: object) -> BuildJob:
    fields: dict[str, object] = {
        "onnx_path": model, "output_path": tmp_path / "out.engine", "precision": "fp32",
        "carried_precision": "fp32", "profiles": dict([parse_shape(TEXT_SHAPE)]),
        "timing_cache": tmp_path / "timing.cache", "tensorrt_module": DOUBLE,
    }
    fields.update(changes)
    return BuildJob(**fields)  # type: ignore[arg-type]


def header(path: Path) -> dict[str, object]:
    return trt_double.read_plan(path.read_bytes())[0]


# ---------------------------------------------------------------- the request


def test_model_inputs_and_precision_of_the_demo_models():
    if not TEXT_DET.is_file():
        pytest.skip("demo models missing: make setup")
    assert model_inputs(onnx.load(str(TEXT_DET))) == {"x": (None, 3, None, None)}
    assert model_inputs(onnx.load(str(ORIENTATION))) == {"x": (None, 3, 224, 224)}
    assert model_precision(onnx.load(str(TEXT_DET))) == "fp32"


def test_qdq_nodes_make_a_model_int8_and_fp16_weights_fp16():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    scale = onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s")
    qdq = onnx.helper.make_graph(
        [onnx.helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
         onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["y"])], "g", [x], [y], [scale])
    assert model_precision(onnx.helper.make_model(qdq)) == "int8"
    half = onnx.numpy_helper.from_array(np.ones(4, np.float16), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [x], [y], [half])
    assert model_precision(onnx.helper.make_model(graph)) == "fp16"


@pytest.mark.parametrize(
    ("requested", "carried", "expected"),
    [("auto", "fp32", "fp32"), ("auto", "int8", "int8"), ("fp16", "fp32", "fp16"),
     ("int8", "int8", "int8"), ("fp32", "fp32", "fp32")],
)
def test_target_precision(requested, carried, expected):
    assert target_precision(requested, carried) == expected


def test_int8_without_qdq_and_contradicting_requests_are_refused():
    with pytest.raises(BuildSpecError, match="int8 needs an explicitly quantized ONNX"):
        target_precision("int8", "fp32")
    with pytest.raises(BuildSpecError, match="carries explicit int8 precision"):
        target_precision("fp16", "int8")


def test_precision_plans_for_tensorrt_10_and_11():
    plan = plan_precision("fp16", "fp32", has_strongly_typed=True, has_fp16_flag=True,
                          tensorrt_version="10.3.0")
    assert (plan.strongly_typed, plan.builder_flags) == (False, ("FP16",))
    with pytest.raises(BuildSpecError, match=r"TensorRT 11\.4\.0 has no FP16 builder flag"):
        plan_precision("fp16", "fp32", has_strongly_typed=True, has_fp16_flag=False,
                       tensorrt_version="11.4.0")
    for version, fp16 in (("10.3.0", True), ("11.4.0", False)):
        for target in ("fp32", "int8"):
            plan = plan_precision(target, target, has_strongly_typed=True, has_fp16_flag=fp16,
                                  tensorrt_version=version)
            assert (plan.strongly_typed, plan.builder_flags) == (True, ())


def test_profiles_are_resolved_against_the_model():
    inputs = {"x": (None, 3, None, None)}
    profiles = resolve_profiles(inputs, dict([parse_shape(TEXT_SHAPE)]))
    assert profile_text(profiles) == "x=1x3x32x32/1x3x64x96/1x3x128x160"
    with pytest.raises(BuildSpecError, match=r"dynamic dims \[0, 2, 3\] of \?x3x\?x\?"):
        resolve_profiles(inputs, {})
    with pytest.raises(BuildSpecError, match=r"dim 1 is fixed at 3 in the model"):
        resolve_profiles(inputs, dict([parse_shape("x:1x4x32x32")]))
    with pytest.raises(BuildSpecError, match=r"not inputs of the model"):
        resolve_profiles(inputs, dict([parse_shape("image:1x3x32x32")]))
    batch_only = resolve_profiles({"x": (None, 3, 224, 224)}, {})
    assert batch_only["x"] == ShapeProfile((1, 3, 224, 224), (1, 3, 224, 224), (1, 3, 224, 224))
    assert profile_text(resolve_profiles({"x": (1, 3, 224, 224)}, {})) == "static"


def test_build_spec_validates_itself():
    with pytest.raises(BuildSpecError, match="precision 'bf16'"):
        BuildSpec(precision="bf16")  # type: ignore[arg-type]
    with pytest.raises(BuildSpecError, match="workspace_mb 0"):
        BuildSpec(workspace_mb=0)
    with pytest.raises(BuildSpecError, match="dla_core -1"):
        BuildSpec(dla_core=-1)


def test_a_configured_precision_is_parsed_into_the_spec_or_refused():
    assert [parse_precision(p) for p in ("auto", "fp32", "fp16", "int8")] == ["auto", "fp32", "fp16", "int8"]
    assert BuildSpec(precision=parse_precision("fp16")).precision == "fp16"
    for bad in ("bf16", "FP16", "fp16 ", ""):
        with pytest.raises(BuildSpecError, match=f"precision {bad!r} is not one of"):
            parse_precision(bad)


# ---------------------------------------------------------------- the TensorRT calls


@needs_demo
def test_a_build_configures_tensorrt_11_and_reports_progress(tmp_path):
    events: list[BuildProgress] = []
    report = build_plan(job(tmp_path), trt_double, events.append)
    plan = header(tmp_path / "out.engine")
    assert plan["strongly_typed"] is True and plan["flags"] == []
    assert plan["pools"] == {"WORKSPACE": 1024 << 20}
    assert plan["profile"] == {"x": [[1, 3, 32, 32], [1, 3, 64, 96], [1, 3, 128, 160]]}
    assert report["progress_monitor"] is True and report["timing_cache_reused"] is False
    phases = [(e.phase, e.event) for e in events]
    assert phases[:4] == [("parse", "start"), ("parse", "finish"), ("configure", "start"),
                          ("configure", "finish")]
    assert ("Tactic selection", "start") in phases and phases[-1] == ("save", "finish")
    nested = next(e for e in events if e.phase == "Tactic selection" and e.event == "start")
    assert (nested.parent, nested.steps) == ("Building engine", 3)


@needs_demo
def test_fp16_from_an_fp32_model_uses_the_builder_flag_on_tensorrt_10(tmp_path):
    build_plan(job(tmp_path, precision="fp16"), trt_double.flavour("10.3.0"), lambda e: None)
    plan = header(tmp_path / "out.engine")
    assert plan["strongly_typed"] is False and plan["flags"] == ["FP16"]


@needs_demo
def test_fp16_from_an_fp32_model_is_refused_on_tensorrt_11(tmp_path):
    with pytest.raises(BuildSpecError, match="no FP16 builder flag"):
        build_plan(job(tmp_path, precision="fp16"), trt_double, lambda e: None)
    assert not (tmp_path / "out.engine").exists()


@needs_demo
def test_sparse_dla_and_version_compatible_options_reach_the_config(tmp_path):
    trt = trt_double.flavour("11.4.0")

    class TwoDlaBuilder(trt_double.Builder):
        def __init__(self, logger: object) -> None:
            super().__init__(logger)  # type: ignore[arg-type]
            self.num_DLA_cores = 2

    trt.Builder = TwoDlaBuilder
    build_plan(job(tmp_path, sparse=True, dla_core=1, version_compatible=True), trt,
               lambda e: None)
    plan = header(tmp_path / "out.engine")
    assert plan["flags"] == ["EXCLUDE_LEAN_RUNTIME", "GPU_FALLBACK", "SPARSE_WEIGHTS",
                             "VERSION_COMPATIBLE"]
    assert (plan["device"], plan["dla_core"]) == ("DLA", 1)
    with pytest.raises(BuildError, match="DLA core 0 asked for; this device has 0"):
        build_plan(job(tmp_path, dla_core=0), trt_double, lambda e: None)


@needs_demo
def test_the_timing_cache_is_saved_and_reused(tmp_path):
    build_plan(job(tmp_path), trt_double, lambda e: None)
    saved = (tmp_path / "timing.cache").read_bytes()
    assert saved.startswith(trt_double.CACHE_MAGIC)
    profiles = dict([parse_shape("x:1x3x224x224")])
    report = build_plan(job(tmp_path, model=ORIENTATION, profiles=profiles), trt_double,
                        lambda e: None)
    assert report["timing_cache_reused"] is True
    assert header(tmp_path / "out.engine")["timing_entries"] == 2


@needs_demo
def test_a_parser_error_is_a_build_error_with_the_parser_message(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BuildError, match="ONNX parser refused the model: ModelImporter"):
        build_plan(job(tmp_path, model=broken), trt_double, lambda e: None)


# ---------------------------------------------------------------- worker, cache, CLI


@needs_demo
def test_the_worker_process_relays_progress_and_returns_the_report(tmp_path):
    events: list[BuildProgress] = []
    report = run_build_worker(job(tmp_path), timeout_s=120, on_progress=events.append)
    assert report["tensorrt_version"] == trt_double.__version__
    assert (tmp_path / "out.engine").is_file()
    assert [e.phase for e in events].count("Tactic selection") == 5


@needs_demo
def test_a_failing_build_in_the_worker_raises_its_message(tmp_path):
    with pytest.raises(BuildError, match="no FP16 builder flag"):
        run_build_worker(job(tmp_path, precision="fp16"), timeout_s=120)
    with pytest.raises(BuildError, match="No module named 'no_such_tensorrt'"):
        run_build_worker(job(tmp_path, tensorrt_module="no_such_tensorrt"), timeout_s=120)


@needs_demo
def test_a_second_build_of_the_same_model_hits_the_cache_and_the_engine_serves(tmp_path):
    cache = EngineCache.in_store(tmp_path)
    first = ensure_engine(TEXT_DET, text_spec(), cache, platform=PLATFORM,
                          tensorrt_module=DOUBLE)
    assert not first.cached and first.path.parent == cache.root
    again = ensure_engine(TEXT_DET, text_spec(), cache, platform=PLATFORM,
                          tensorrt_module=DOUBLE)
    assert again.cached and again.path == first.path and again.key == first.key
    assert first.key.precision == "fp32" and first.key.profile.startswith("x=1x3x32x32")
    meta = json.loads(cache.meta_path(first.key).read_text())
    assert meta["build"]["spec"]["shapes"]["x"]["max"] == [1, 3, 128, 160]
    other_profile = ensure_engine(TEXT_DET, BuildSpec(shapes=dict([parse_shape(
        "x:1x3x32x32:1x3x64x64:1x3x64x64")])), cache, platform=PLATFORM, tensorrt_module=DOUBLE)
    assert not other_profile.cached and other_profile.path != first.path
    assert first.key.differences(other_profile.key) == [
        "shape profile differs: 'x=1x3x32x32/1x3x64x96/1x3x128x160' != "
        "'x=1x3x32x32/1x3x64x64/1x3x64x64'"]

    memory = trt_double.FakeCudaMemory()
    trt_double.attach(memory)
    try:
        engine = TensorRTEngine.load(first.path, tensorrt=trt_double, memory=memory)
        out = engine.infer({"x": np.zeros((1, 3, 64, 96), np.float32)})
        assert out["sigmoid_0.tmp_0"].shape == (1, 1, 64, 96)
        engine.close()
    finally:
        trt_double.attach(None)
    assert memory.allocations == {}


@needs_demo
def test_a_pruned_model_is_built_with_sparse_weights(tmp_path):
    pruned = tmp_path / "pruned.onnx"
    onnx.save(prune_model_2to4(onnx.load(str(ORIENTATION))), str(pruned))
    built = ensure_engine(pruned, BuildSpec(), EngineCache.in_store(tmp_path),
                          platform=PLATFORM, tensorrt_module=DOUBLE)
    assert built.key.precision == "fp32+sparse"
    assert "SPARSE_WEIGHTS" in header(built.path)["flags"]
    dense = ensure_engine(ORIENTATION, BuildSpec(), EngineCache.in_store(tmp_path),
                          platform=PLATFORM, tensorrt_module=DOUBLE)
    assert dense.key.precision == "fp32"
    assert "SPARSE_WEIGHTS" not in header(dense.path)["flags"]


@needs_demo
def test_a_failed_build_leaves_nothing_in_the_cache(tmp_path):
    cache = EngineCache.in_store(tmp_path)
    with pytest.raises(BuildSpecError):
        ensure_engine(TEXT_DET, text_spec(precision="int8"), cache, platform=PLATFORM,
                      tensorrt_module=DOUBLE)
    with pytest.raises(BuildError, match="no FP16 builder flag"):
        ensure_engine(TEXT_DET, text_spec(precision="fp16"), cache, platform=PLATFORM,
                      tensorrt_module=DOUBLE)
    assert cache.keys() == []
    assert [p.name for p in cache.root.iterdir()] == []


@needs_demo
def test_the_cli_refuses_bad_requests_naming_the_problem(tmp_path, capsys):
    assert main([str(TEXT_DET), "--store", str(tmp_path), "--shape", "x:1x3"]) == 2
    assert "input 'x': profile rank 2" in capsys.readouterr().err
    assert main([str(TEXT_DET), "--store", str(tmp_path)]) == 2
    assert "give its range as x:MIN:OPT:MAX" in capsys.readouterr().err
    assert main([str(TEXT_DET), "--store", str(tmp_path), "--precision", "int8",
                 "--shape", TEXT_SHAPE]) == 2
    assert "int8 needs an explicitly quantized ONNX" in capsys.readouterr().err


@needs_demo
@pytest.mark.skipif(gpu_available() is not None, reason="this machine has a GPU")
def test_the_cli_without_a_gpu_says_so(tmp_path, capsys):
    assert main([str(TEXT_DET), "--store", str(tmp_path), "--shape", TEXT_SHAPE]) == 1
    assert "need an NVIDIA GPU with a working driver" in capsys.readouterr().err
