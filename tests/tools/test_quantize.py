"""INT8 Q/DQ quantization of the real demo models, calibrated on the demo video, compared with FP32.

Agreement bounds are loose (a handful of frames is noisy); speed is printed, never asserted.
"""

from __future__ import annotations

import json

import onnx
import pytest

from agent.models.manifest import Manifest
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.tools.compare import compare_models, format_comparison
from agent.tools.errors import FramesError, QuantizeError, ToolError
from agent.tools.frames import covering_frames, read_frames, read_video_frames
from agent.tools.modelref import resolve_model
from agent.tools.onnxutil import default_opset
from agent.tools.quantize import QuantizeOptions, calibration_feeds, prepare_for_quantization, quantize_model
from agent.tools.sensitivity import MAX_SEARCH_STEPS, next_float_nodes
from agent.vision.transforms import Preprocessor

CALIBRATION_FRAMES = 8
COMPARE_FRAMES = 12


@pytest.fixture(scope="module")
def frames(demo_dir):
    return read_video_frames(demo_dir / "video.mp4", COMPARE_FRAMES)


@pytest.fixture(scope="module")
def text_det_int8(tmp_path_factory, demo_dir, frames):
    """PP-OCRv4's detector (opset 12, weights in Constant nodes) quantized per channel for TensorRT."""
    source = resolve_model(demo_dir / "models" / "text-det-v4")
    out = tmp_path_factory.mktemp("quant") / "text-det-int8"
    result = quantize_model(source, frames[::3], out, QuantizeOptions(target="tensorrt", per_channel=True))
    return source, result


def test_pp_ocr_v4_is_raised_from_opset_12_and_its_per_channel_qdq_graph_loads_and_runs(text_det_int8, frames):
    source, result = text_det_int8
    model = onnx.load(str(result.path))
    assert (result.source_opset, result.opset) == (12, 14), "13 for per-channel Q/DQ, 14 for HardSwish"
    dequant = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert any(a.name == "axis" for n in dequant for a in n.attribute), "no per-channel DequantizeLinear"
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dequant_outputs = {n.output[0] for n in dequant}
    assert conv_weights <= dequant_outputs, "some Conv weights were not quantized (Constant nodes left?)"
    initializers = {i.name: i for i in model.graph.initializer}
    zero_points = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert all(not any(onnx.numpy_helper.to_array(z).ravel()) for z in zero_points), "TensorRT needs zero point 0"
    result_cmp = compare_models(source, resolve_model(result.path.parent), frames)
    print("\n" + format_comparison(result_cmp))
    assert result_cmp.agreement.metric == "box_f1"
    assert result_cmp.agreement.frames == len(frames)
    assert result_cmp.agreement.value > 0.2


def test_quantized_folder_keeps_preprocess_head_and_hashes_with_an_int8_version(text_det_int8):
    source, result = text_det_int8
    written = Manifest.read(result.path.parent / "manifest.json")
    assert written.version == "v4-int8"
    assert written.preprocess == source.manifest.preprocess and written.head == source.manifest.head
    assert written.golden == ()
    written.verify_files(result.path.parent)
    assert set(written.files) == {"model.onnx", "LICENSE"}
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["edge_agent.opset"] == "14"
    assert '"per_channel": true' in props["edge_agent.quantization"]


def test_orientation_int8_for_cpu_agrees_with_fp32_on_most_frames(tmp_path, demo_dir, frames):
    source = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    result = quantize_model(source, frames[::2], tmp_path / "q",
                            QuantizeOptions(target="cpu", per_channel=True))
    comparison = compare_models(source, resolve_model(tmp_path / "q"), frames)
    print("\n" + format_comparison(comparison))
    assert comparison.agreement.metric == "top1"
    assert comparison.agreement.value >= 0.5
    assert comparison.b.size_bytes < comparison.a.size_bytes / 2
    model = onnx.load(str(result.path))
    initializers = {i.name: i for i in model.graph.initializer}
    zero_points = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points), "u8 activations"


def test_calibration_tensors_are_the_agents_float_preprocessing(demo_dir, frames):
    source = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    prepared = prepare_for_quantization(onnx.load(str(source.path)))
    feeds = calibration_feeds(prepared, source.manifest, frames[:2])
    engine = OnnxRuntimeEngine.load(source.path, threads=1)
    expected, _ = Preprocessor.for_inputs(source.manifest.preprocess, engine.inputs).prep(frames[0])
    assert feeds[0]["x"].shape == (1, 3, 224, 224)
    assert (feeds[0]["x"] == expected).all()


def test_calibration_from_an_image_folder(tmp_path, demo_dir):
    frames = read_frames(3, images=demo_dir / "images")
    assert len(frames) == 3 and all(f.ndim == 3 and f.shape[2] == 3 for f in frames)
    source = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    result = quantize_model(source, frames, tmp_path / "q", QuantizeOptions(target="cpu"))
    assert result.frames == 3 and result.path.is_file()


def test_bad_requests_name_what_is_wrong(tmp_path, demo_dir):
    with pytest.raises(QuantizeError, match="TensorRT builds INT8 engines only from Q/DQ"):
        QuantizeOptions(target="tensorrt", format="qoperator")
    with pytest.raises(QuantizeError, match="use minmax, average, entropy, percentile"):
        QuantizeOptions(method="kl")  # type: ignore[arg-type]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    source = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    with pytest.raises(ToolError, match="not an empty folder"):
        quantize_model(source, [], tmp_path / "busy", QuantizeOptions())
    with pytest.raises(FramesError, match="no images"):
        read_frames(2, images=tmp_path / "busy")
    with pytest.raises(FramesError, match="no such video"):
        read_frames(2, video=tmp_path / "missing.mp4")


def test_opset_of_the_demo_model_is_what_the_upgrade_starts_from(demo_dir):
    assert default_opset(onnx.load(str(demo_dir / "models" / "text-det-v4" / "model.onnx"))) == 12


def test_covering_selection_takes_each_distinct_scene_before_a_second_frame_of_any(demo_dir):
    images = read_frames(3, images=demo_dir / "images")
    lingering = [images[0]] * 10 + [images[1], images[2]]
    chosen = covering_frames(lingering, 3)
    assert len(chosen) == 3
    assert sum(frame is images[0] for frame in chosen) == 1, "the view the pan lingers on is taken once"
    assert any(frame is images[1] for frame in chosen) and any(frame is images[2] for frame in chosen)
    assert covering_frames(lingering, 20) == lingering


def test_the_search_finds_the_fewest_float_nodes_that_meet_the_target():
    needed = 37
    done: dict[int, float] = {}
    while (k := next_float_nodes(done, 0.95, 150)) is not None:
        assert k not in done
        done[k] = 0.96 if k >= needed else 0.5
    assert min(k for k, value in done.items() if value >= 0.95) == needed
    assert len(done) <= MAX_SEARCH_STEPS
    assert next_float_nodes({0: 0.97}, 0.95, 150) is None, "all-INT8 meeting the target ends the search"
    assert next_float_nodes({0: 0.1, 150: 0.2}, 0.95, 150) is None, "even all-float misses: nothing more to try"


def test_target_agreement_keeps_sensitive_layers_in_float_and_writes_the_per_layer_report(tmp_path, demo_dir,
                                                                                          capsys):
    from agent.cli.main import main

    out = tmp_path / "q"
    code = main(["model", "quantize", str(demo_dir / "models" / "orientation-0.0.11"), "--calib-video",
                 str(demo_dir / "video.mp4"), "--frames", "4", "--eval-frames", "6", "--target", "cpu",
                 "--per-channel", "--method", "average", "--target-agreement", "1.0", "--top", "5", "-o", str(out)])
    captured = capsys.readouterr()
    printed = captured.out
    report = json.loads((out / "sensitivity_report.json").read_text())
    assert code == (0 if report["met"] else 1)
    assert report["metric"] == "top1" and report["target"] == 1.0
    errors = [layer["rel_error"] for layer in report["layers"]]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0, "most sensitive first"
    kept = [layer["node"] for layer in report["layers"] if layer["kept_float"]]
    assert kept == [layer["node"] for layer in report["layers"][: len(kept)]], "the most sensitive stay float"
    assert report["steps"][0]["kept_float"] == 0 and all(0 <= s["agreement"] <= 1 for s in report["steps"])
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["edge_agent.float_nodes"]) == kept
    assert "precision" in printed and "more layers" in printed and "against target 1.000" in printed
    progress = captured.err.splitlines()
    assert "calibrate 4/4 100.0%" in progress, "the calibration that fills the range cache"
    measured = [line for line in progress if line.startswith("sensitivity ")]
    assert measured[-1].endswith(" 100.0%") and len(measured) <= 11, "piped, a line a tenth of the layers"
    searched = [line for line in progress if line.startswith("search ")]
    assert len(searched) == len(report["steps"]) and searched[0].startswith("search 1 0 float -> top1 ")
    Manifest.read(out / "manifest.json").verify_files(out)
