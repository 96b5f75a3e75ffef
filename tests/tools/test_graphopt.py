"""The exact graph rewrites on the real PP-OCRv4 detector: fewer nodes, the same outputs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.cli.main import main
from agent.models.manifest import Manifest
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.tools.frames import read_video_frames
from agent.tools.graphopt import fold_affine_into_conv, fold_conv_affine, fuse_hardswish, optimize_graph
from agent.tools.modelref import resolve_model
from agent.tools.onnxutil import constants_to_initializers, upgrade_opset
from agent.tools.quantize import calibration_feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    engine = OnnxRuntimeEngine.load(model.SerializeToString(), threads=1)
    return next(iter(engine.infer(feeds).values()))


def test_pp_ocr_v4_loses_most_elementwise_nodes_and_keeps_its_outputs(demo_dir):
    source = resolve_model(demo_dir / "models" / "text-det-v4")
    model = upgrade_opset(constants_to_initializers(onnx.load(str(source.path))), 14)
    optimized, report = optimize_graph(model)
    onnx.checker.check_model(optimized)
    before, after = Counter(n.op_type for n in model.graph.node), Counter(n.op_type for n in optimized.graph.node)
    assert report.nodes_after < 0.6 * report.nodes_before
    assert after["Conv"] == before["Conv"] and after["HardSwish"] == report.hardswish > 0
    assert after["Mul"] + after["Add"] < 0.4 * (before["Mul"] + before["Add"])
    used = {name for node in optimized.graph.node for name in node.input}
    assert all(init.name in used for init in optimized.graph.initializer), "folded constants are dropped"
    frame = read_video_frames(demo_dir / "video.mp4", 1)
    feeds = calibration_feeds(model, source.manifest, frame)[0]
    expected, got = _run(model, feeds), _run(optimized, feeds)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _conv_graph(nodes, extra_inits, pads=(1, 1, 1, 1)):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"), *extra_inits]
    conv = helper.make_node("Conv", ["conv_in", "w", "b"], ["conv_out"], pads=list(pads), name="conv")
    graph = helper.make_graph([*nodes[0], conv, *nodes[1]], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_affine_after_a_conv_folds_with_the_constant_on_either_side():
    scale = numpy_helper.from_array(np.arange(1, 5, dtype=np.float32).reshape(1, 4, 1, 1), "s")
    shift = numpy_helper.from_array(np.float32(0.5).reshape(()), "t")
    model = _conv_graph(([helper.make_node("Identity", ["x"], ["conv_in"])],
                         [helper.make_node("Mul", ["s", "conv_out"], ["m"]),
                          helper.make_node("Add", ["m", "t"], ["y"])]), [scale, shift])
    folded, count = fold_conv_affine(model)
    assert count == 2 and [n.op_type for n in folded.graph.node] == ["Identity", "Conv"]
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, {"x": x}), _run(model, {"x": x}), rtol=1e-5, atol=1e-5)


def test_affine_before_a_padded_conv_is_left_and_before_an_unpadded_one_is_folded():
    a = numpy_helper.from_array(np.float32(2.0).reshape(()), "a")
    c = numpy_helper.from_array(np.float32(-1.0).reshape(()), "c")
    pre = [helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Add", ["ax", "c"], ["conv_in"])]
    post = [helper.make_node("Identity", ["conv_out"], ["y"])]
    padded = _conv_graph((pre, post), [a, c])
    assert fold_affine_into_conv(padded)[1] == 0, "a padded border would see the shift where it saw zeros"
    unpadded = _conv_graph((pre, post), [a, c], pads=(0, 0, 0, 0))
    folded, count = fold_affine_into_conv(unpadded)
    assert count == 2
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, {"x": x}), _run(unpadded, {"x": x}), rtol=1e-5, atol=1e-4)


def test_hardswish_spelled_out_becomes_one_node_only_from_opset_14():
    consts = [numpy_helper.from_array(np.float32(v).reshape(()), n) for n, v in
              (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    nodes = [helper.make_node("Add", ["x", "three"], ["p"]), helper.make_node("Clip", ["p", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]

    def model(opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])], consts)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    assert fuse_hardswish(model(13))[1] == 0
    fused, count = fuse_hardswish(model(14))
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["HardSwish"]
    x = np.linspace(-5, 5, 5, dtype=np.float32)
    np.testing.assert_allclose(_run(fused, {"x": x}), _run(model(14), {"x": x}), atol=1e-6)


def test_simplify_cli_writes_a_model_folder(tmp_path, demo_dir, capsys):
    assert main(["model", "simplify", str(demo_dir / "models" / "text-det-v4"), "-o", str(tmp_path / "s")]) == 0
    assert "HardSwish fused" in capsys.readouterr().out
    manifest = Manifest.read(tmp_path / "s" / "manifest.json")
    assert manifest.version == "v4-simplified"
    manifest.verify_files(tmp_path / "s")
    with pytest.raises(SystemExit):
        main(["model", "simplify"])
