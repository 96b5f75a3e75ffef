"""Structured (channel) pruning, recovery by distillation from the dense model, and the bundles the results make.

The channel surgery runs on ONNX alone; recovery needs the torch extra (torch and onnx2torch) and is
skipped without it. Runs are kept short (a few frames, a few steps): what is checked is that each
step does what it says, not how far a long run gets (``make bench`` measures that).
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.models.bundle import unpack_bundle
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeploymentManager
from agent.models.sparsity import sparsity_report
from agent.models.store import ModelStore
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.tools.channels import CHANNEL_MULTIPLE, channel_groups, prune_channels
from agent.tools.errors import PruneError
from agent.tools.frames import read_video_frames
from agent.tools.modelref import resolve_model
from agent.tools.pack import build_manifest, pack_model
from agent.tools.quantize import QuantizeOptions, calibration_feeds, quantize_model

ORIENTATION = "orientation-0.0.11"


def _chain(residual: bool) -> onnx.ModelProto:
    """x -> Conv A (3->16) -> Relu -> depthwise Conv -> Mul(per-channel) -> Conv B (16->4), or, with
    ``residual``, A's Relu output also added to the depthwise output (tying A's channels to another tensor).
    Half of A's filters are zero."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 3, 3, 3)).astype(np.float32)
    a[1::2] = 0.0
    inits = [numpy_helper.from_array(a, "wa"), numpy_helper.from_array(np.zeros(16, np.float32), "ba"),
             numpy_helper.from_array(rng.normal(size=(16, 1, 3, 3)).astype(np.float32), "wd"),
             numpy_helper.from_array(rng.uniform(0.5, 2, (1, 16, 1, 1)).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.normal(size=(4, 16, 1, 1)).astype(np.float32), "wb")]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="R"),
             helper.make_node("Conv", ["r", "wd"], ["d"], name="D", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["d", "scale"], ["m"], name="M")]
    last = "m"
    if residual:
        nodes.append(helper.make_node("Add", ["m", "r"], ["s"], name="S"))
        last = "s"
    nodes.append(helper.make_node("Conv", [last, "wb"], ["y"], name="B"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    engine = OnnxRuntimeEngine.load(model.SerializeToString(), threads=1)
    try:
        return engine.infer({"x": x})["y"]
    finally:
        engine.close()


def test_channels_go_through_activations_depthwise_convs_and_per_channel_constants_and_dead_ones_go_first():
    model = _chain(residual=False)
    groups = channel_groups(model)
    assert [(g.producer, g.members, g.consumers) for g in groups] == [("A", ("R", "D", "M"), ("B",))]
    pruned, report = prune_channels(model, 0.5)
    assert report.groups[0].kept == CHANNEL_MULTIPLE and report.params_after < report.params_before
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(model, x), rtol=1e-5, atol=1e-5,
                               err_msg="the zero filters are the ones removed, so nothing changes")
    weights = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    depthwise = next(n for n in pruned.graph.node if n.name == "D")
    assert weights[depthwise.input[1]].shape == (8, 1, 3, 3)
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 8


def test_channels_tied_to_a_residual_add_are_left_whole():
    assert channel_groups(_chain(residual=True)) == []
    with pytest.raises(PruneError, match="no channel group can be pruned"):
        prune_channels(_chain(residual=True), 0.5)
    with pytest.raises(PruneError, match="outside"):
        prune_channels(_chain(residual=False), 1.0)


@pytest.fixture(scope="module")
def frames(demo_dir):
    return read_video_frames(demo_dir / "video.mp4", 12)


def test_least_squares_refit_on_frames_brings_the_pruned_model_closer_to_the_dense_one(demo_dir, frames):
    from agent.tools.prune_recover import dense_graph

    source = resolve_model(demo_dir / "models" / "text-det-v4")
    dense = dense_graph(source)
    feeds = calibration_feeds(dense, source.manifest, frames[0::2][:2])
    probe = calibration_feeds(dense, source.manifest, frames[1::2][:2])
    sliced, report = prune_channels(dense, 0.5)
    refit, _ = prune_channels(dense, 0.5, feeds)
    assert len(report.groups) > 10 and report.params_after < 0.55 * report.params_before

    def rel(model: onnx.ModelProto) -> float:
        engine = OnnxRuntimeEngine.load(model.SerializeToString(), threads=2)
        reference = OnnxRuntimeEngine.load(dense.SerializeToString(), threads=2)
        name = reference.outputs[0].name
        got = np.concatenate([engine.infer(f)[name].ravel() for f in probe])
        want = np.concatenate([reference.infer(f)[name].ravel() for f in probe])
        return float(np.linalg.norm(got - want) / np.linalg.norm(want))

    assert rel(refit) < 0.8 * rel(sliced), "refitting the 1x1 consumers recovers part of what slicing lost"



@pytest.fixture(scope="module")
def torch():
    """torch and onnx2torch (``make setup`` installs both), else the test is skipped."""
    module = pytest.importorskip("torch")
    from agent.tools.errors import DistillError
    from agent.tools.recover import load_onnx2torch

    try:
        load_onnx2torch()
    except DistillError as exc:
        pytest.skip(str(exc))
    return module


def test_write_back_puts_the_modules_parameters_into_the_same_graph(torch, demo_dir):
    from agent.tools.prune_recover import dense_graph
    from agent.tools.recover import to_torch, write_back

    dense = dense_graph(resolve_model(demo_dir / "models" / ORIENTATION))
    module = to_torch(dense)
    unchanged = write_back(dense, module)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    engine = OnnxRuntimeEngine.load(dense.SerializeToString(), threads=1)
    name = engine.outputs[0].name
    np.testing.assert_allclose(OnnxRuntimeEngine.load(unchanged.SerializeToString(), threads=1).infer({"x": x})[name],
                               engine.infer({"x": x})[name], atol=1e-6)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(0.9)
        expected = module(torch.from_numpy(x)).numpy()
    changed = OnnxRuntimeEngine.load(write_back(dense, module).SerializeToString(), threads=1).infer({"x": x})[name]
    np.testing.assert_allclose(changed, expected, rtol=1e-3, atol=1e-5)
    assert not np.allclose(changed, engine.infer({"x": x})[name], atol=1e-3)


def test_the_probability_map_loss_adds_dice_so_a_missed_small_text_region_costs_as_much_as_a_large_one(torch):
    from agent.tools.recover import _loss

    loss = _loss("text_detect_db", "Sigmoid", logits=False)
    target = torch.zeros(2, 1, 32, 32)
    target[0, :, 4:6, 4:8] = 1.0  # a small word
    target[1, :, 4:20, 4:28] = 1.0  # a large one
    background = torch.full_like(target, -6.0)  # logits of a student that sees no text anywhere
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    missed = [float(loss(background[i:i + 1], target[i:i + 1]) - bce(background[i:i + 1], target[i:i + 1]))
              for i in range(2)]
    assert all(0.8 < dice <= 1.0 for dice in missed), f"missing a word costs about 1 whatever its size: {missed}"
    assert float(bce(background[:1], target[:1])) < 0.2 * float(bce(background[1:], target[1:])), \
        "binary cross-entropy alone barely sees the small word"
    perfect = torch.where(target > 0.5, 12.0, -12.0)
    assert float(loss(perfect, target)) < 0.01


def test_channel_pruning_with_recovery_reports_accuracy_speed_and_size_of_each_stage(torch, tmp_path, demo_dir,
                                                                                     frames, capsys):
    from agent.cli.main import main

    out = tmp_path / "pruned"
    assert main(["model", "prune", str(demo_dir / "models" / ORIENTATION), "--pattern", "channels",
                 "--sparsity", "0.5", "--recover", "--video", str(demo_dir / "video.mp4"), "--frames", "6",
                 "--eval-frames", "4", "--val-frames", "4", "--steps", "3", "--batch-size", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "prune_report.json").read_text())
    stages = {stage["label"]: stage for stage in report["stages"]}
    assert list(stages) == ["dense (exact rewrites)", "pruned", "pruned + recovered"]
    assert stages["dense (exact rewrites)"]["agreement"] == 1.0
    assert stages["pruned"]["size_bytes"] < 0.85 * stages["dense (exact rewrites)"]["size_bytes"]
    assert stages["pruned + recovered"]["size_bytes"] == stages["pruned"]["size_bytes"]
    assert len(report["losses"]) == 3 and all(math.isfinite(loss) for loss in report["losses"])
    assert set(report["seconds"]) == {"prune", "recover", "validate", "evaluate"}
    assert report["pruning"]["channels_after"] < report["pruning"]["channels_before"]
    choice = report["choice"]
    assert choice["frames"] == 4 and report["kept"] == choice["kept"]
    recovered_wins = (choice["recovered"]["agreement"], -choice["recovered"]["rel_error"]) > \
        (choice["pruned"]["agreement"], -choice["pruned"]["rel_error"])
    assert choice["kept"] == ("pruned + recovered" if recovered_wins else "pruned")
    assert "pruned + recovered" in printed and "time: prune" in printed
    assert f"kept: {choice['kept']} (" in printed
    assert resolve_model(out).manifest.version == ("0.0.11-channels50-recovered" if recovered_wins
                                                   else "0.0.11-channels50")


@pytest.mark.parametrize("recovery", ["breaks", "restores"])
def test_recovery_keeps_the_better_of_pruned_and_recovered_on_validation_frames(recovery, tmp_path, demo_dir, frames,
                                                                                 monkeypatch):
    """A stand-in recovery returns a known-worse model (90% magnitude-pruned) or a known-better one (the dense
    graph): the choice follows the validation numbers, which are those of the written model."""
    from agent.tools import prune_recover
    from agent.tools.compare import compare_models
    from agent.tools.errors import DistillError
    from agent.tools.prune import prune_onnx
    from agent.tools.recover import RecoverOptions, RecoverResult

    source = resolve_model(demo_dir / "models" / ORIENTATION)

    def stand_in(teacher, student, training, options, **_):
        model = prune_onnx(student, 0.9, "unstructured")[0] if recovery == "breaks" else \
            prune_recover.dense_graph(teacher)
        return RecoverResult(model, (1.0,), len(training), 0.0)

    monkeypatch.setattr(prune_recover, "recover", stand_in)
    validation, evaluation = frames[4:8], frames[8:12]
    out = tmp_path / recovery
    result = prune_recover.prune_recover_folder(source, out, "unstructured", 0.1, calibration=(),
                                                training=frames[:2], evaluation=evaluation, validation=validation,
                                                options=RecoverOptions(steps=1, crop=None))
    choice = result.choice
    assert choice is not None and choice.frames == len(validation)
    if recovery == "breaks":
        assert choice.recovered.agreement < choice.pruned.agreement
        assert choice.kept == "pruned" and "did not improve" in choice.reason
        assert result.manifest.version == "0.0.11-pruned10"
    else:
        assert choice.recovered.rel_error is not None and choice.pruned.rel_error is not None
        assert choice.recovered.rel_error < choice.pruned.rel_error
        assert choice.kept == "pruned + recovered" and "raised validation" in choice.reason
        assert result.manifest.version == "0.0.11-pruned10-recovered"
    written = compare_models(source, resolve_model(out), validation).agreement
    kept = choice.pruned if choice.kept == "pruned" else choice.recovered
    assert (written.value, written.rel_error) == pytest.approx((kept.agreement, kept.rel_error), rel=1e-4)
    report = json.loads((out / "prune_report.json").read_text())
    assert report["kept"] == choice.kept and report["choice"]["reason"] == choice.reason
    assert report["choice"]["pruned"]["agreement"] == choice.pruned.agreement
    assert result.kept.label == choice.kept
    with pytest.raises(DistillError, match="needs validation frames"):
        prune_recover.prune_recover_folder(source, tmp_path / "none", "unstructured", 0.1, calibration=(),
                                           training=frames[:2], evaluation=evaluation, validation=(),
                                           options=RecoverOptions(steps=1, crop=None))


def test_recovery_after_two_four_pruning_keeps_the_pattern_tensorrt_needs(torch, tmp_path, demo_dir, frames):
    from agent.tools.prune_recover import prune_recover_folder
    from agent.tools.recover import RecoverOptions

    source = resolve_model(demo_dir / "models" / ORIENTATION)
    result = prune_recover_folder(source, tmp_path / "sparse", "2:4", 0.5, calibration=(), training=frames[:3],
                                  evaluation=frames[3:5], options=RecoverOptions(steps=2, batch_size=2, crop=None))
    assert len(result.losses) == 2
    assert result.choice is not None and result.choice.frames == 1, "without validation frames, a quarter of " \
        "the training frames is held out for the choice"
    assert sparsity_report(onnx.load(str(tmp_path / "sparse" / "model.onnx"))).fraction == 1.0


@pytest.mark.parametrize("kind", ["int8", "recovered"])
def test_quantized_and_recovered_models_pack_into_bundles_whose_goldens_pass_deployment(kind, tmp_path, demo_dir,
                                                                                        frames, request):
    source = resolve_model(demo_dir / "models" / ORIENTATION)
    folder = tmp_path / kind
    if kind == "int8":
        quantize_model(source, frames[:4], folder, QuantizeOptions(target="cpu", per_channel=True))
    else:
        request.getfixturevalue("torch")
        from agent.tools.prune_recover import prune_recover_folder
        from agent.tools.recover import RecoverOptions

        prune_recover_folder(source, folder, "channels", 0.5, calibration=frames[:2], training=frames[:2],
                             evaluation=frames[2:4], validation=frames[4:6],
                             options=RecoverOptions(steps=1, batch_size=1, crop=None))
    derived = resolve_model(folder)
    manifest = build_manifest(name="orientation", version=derived.manifest.version, task="classify",
                              labels=list(source.manifest.head.labels), template=derived.manifest,
                              license="Apache-2.0")
    packed = pack_model(derived.path, manifest, tmp_path / f"{kind}.tar", profile_video=demo_dir / "video.mp4",
                        profile_frames=4, atol=0.05)
    unpack_bundle(packed.bundle, tmp_path / "staged")
    installed = ModelStore(tmp_path / "engines").install(tmp_path / "staged")
    for fused in (True, False):
        serving = load_serving(installed, EngineOptions(threads=1, fuse_preprocessing=fused))
        DeploymentManager.check_goldens(serving)
        serving.engine.close()
