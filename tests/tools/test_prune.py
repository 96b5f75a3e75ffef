"""Magnitude pruning of the real demo models: per-layer sparsity reached, 2:4 checked, agreement printed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.models.manifest import Manifest
from agent.models.sparsity import sparsity_report
from agent.tools.compare import compare_models, format_comparison
from agent.tools.errors import PruneError
from agent.tools.frames import read_video_frames
from agent.tools.modelref import resolve_model
from agent.tools.onnxutil import weight_uses
from agent.tools.prune import format_report, prune_folder, prune_onnx

COMPARE_FRAMES = 10


def test_unstructured_half_prunes_every_layer_to_half_and_the_report_says_so(tmp_path, demo_dir):
    source = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    manifest, report = prune_folder(source, tmp_path / "pruned", 0.5, "unstructured")
    assert manifest.version == "0.0.11-pruned50"
    manifest.verify_files(tmp_path / "pruned")
    model = onnx.load(str(tmp_path / "pruned" / "model.onnx"))
    for use in weight_uses(model):
        weight = numpy_helper.to_array(use.initializer)
        assert abs(np.count_nonzero(weight == 0) - 0.5 * weight.size) <= 1, use.name
    assert len(report.layers) == len(list(weight_uses(model)))
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    saved = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert saved["pattern"] == "unstructured" and len(saved["layers"]) == len(report.layers)
    assert all(layer["sparsity"] == pytest.approx(0.5, abs=0.01) for layer in saved["layers"])
    table = format_report(report)
    assert report.layers[0].name in table and "total:" in table


def test_pruned_model_still_runs_and_its_agreement_with_the_dense_one_is_measured(tmp_path, demo_dir):
    source = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    prune_folder(source, tmp_path / "pruned", 0.3, "unstructured")
    frames = read_video_frames(demo_dir / "video.mp4", COMPARE_FRAMES)
    comparison = compare_models(source, resolve_model(tmp_path / "pruned"), frames)
    print("\n" + format_comparison(comparison))
    assert comparison.agreement.metric == "top1" and 0.0 <= comparison.agreement.value <= 1.0
    assert comparison.agreement.rel_error is not None and comparison.agreement.rel_error > 0.0


def test_two_four_on_pp_ocr_weights_held_in_constant_nodes_is_what_tensorrt_wants(tmp_path, demo_dir):
    source = resolve_model(demo_dir / "models" / "text-det-v4")
    before = sparsity_report(onnx.load(str(source.path)))
    assert before.fraction == 0.0
    manifest, report = prune_folder(source, tmp_path / "sparse", 0.5, "2:4")
    after = sparsity_report(onnx.load(str(tmp_path / "sparse" / manifest.model_file)))
    assert after.worth_flag and after.fraction == 1.0
    assert report.two_four_fraction == 1.0
    whole_groups = [layer for layer in report.layers
                    if layer.name in set(after.eligible) and layer.op_type == "Conv" and layer.shape[1] % 4 == 0]
    assert whole_groups and all(layer.sparsity >= 0.5 for layer in whole_groups)
    assert manifest.version == "v4-sparse24"
    frames = read_video_frames(demo_dir / "video.mp4", 4)
    comparison = compare_models(source, resolve_model(tmp_path / "sparse"), frames)
    print("\n" + format_comparison(comparison))
    assert comparison.agreement.metric == "box_f1"


def test_bad_prune_requests_are_refused(demo_dir):
    model = onnx.load(str(demo_dir / "models" / "orientation-0.0.11" / "model.onnx"))
    with pytest.raises(PruneError, match="outside"):
        prune_onnx(model, 1.0, "unstructured")
    with pytest.raises(PruneError, match="50% sparse by definition"):
        prune_onnx(model, 0.7, "2:4")
    with pytest.raises(PruneError, match="pattern 'blocks'"):
        prune_onnx(model, 0.5, "blocks")  # type: ignore[arg-type]
    empty = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    with pytest.raises(PruneError, match="no Conv"):
        prune_onnx(empty, 0.5, "unstructured")


def test_prune_cli_prints_the_table_and_json(tmp_path, demo_dir, capsys):
    from agent.cli.main import main

    folder = demo_dir / "models" / "orientation-0.0.11"
    assert main(["model", "prune", str(folder), "--sparsity", "0.25", "--top", "3",
                 "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "... " in out and "more layers" in out and "sparsity 25.0%" in out
    assert main(["model", "prune", str(folder), "--pattern", "2:4", "--json", "-o", str(tmp_path / "b")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pattern"] == "2:4" and data["two_four_fraction"] == 1.0
    assert Manifest.read(tmp_path / "b" / "manifest.json").version == "0.0.11-sparse24"
    assert main(["model", "prune", str(folder), "--sparsity", "0.5", "-o", str(tmp_path / "b")]) == 1
    assert "not an empty folder" in capsys.readouterr().err


def test_held_out_frames_are_spread_over_the_whole_video_not_taken_from_its_start():
    from agent.tools.frames import hold_out

    frames = list(range(64))
    training, held = hold_out(frames, 16)
    assert len(held) == 16 and not set(held) & set(training) and len(training) == 48
    assert min(held) < 8 and max(held) > 56, f"held-out frames {held} must reach both ends of the video"
    assert hold_out(frames, 0) == (frames, [])
