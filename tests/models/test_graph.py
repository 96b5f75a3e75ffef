"""Fusing the preprocessing into ONNX graphs, and the fit of manifests to model tensors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from agent.models.graph import (
    FUSED_METADATA_KEY,
    SpecMismatchError,
    check_fits_head,
    check_fits_input,
    fuse_preprocessing,
)
from agent.models.manifest import HeadSpec, Manifest, PreprocessSpec
from agent.runtime.base import TensorSpec
from agent.vision.transforms import Preprocessor

DEMO = Path(__file__).resolve().parents[2] / "demo"
DEMO_MODELS = ("text-det-v4", "text-det-v6", "orientation-0.0.11")
needs_demo = pytest.mark.skipif(
    not (DEMO / "models").is_dir(), reason="demo models missing: run `make setup`"
)
ORT_THREADS = 2
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
F32 = np.dtype(np.float32)


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = ORT_THREADS
    options.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def tensor_specs(args: list[ort.NodeArg]) -> list[TensorSpec]:
    return [
        TensorSpec(
            a.name,
            tuple(d if isinstance(d, int) else None for d in a.shape),
            np.dtype(ORT_DTYPES.get(a.type, np.float32)),
        )
        for a in args
    ]


def demo_model(name: str) -> tuple[onnx.ModelProto, Manifest]:
    folder = DEMO / "models" / name
    return onnx.load(str(folder / "model.onnx")), Manifest.read(folder / "manifest.json")


def video_frame(index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(DEMO / "video.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"cannot read frame {index} of the demo video"
    return frame


def page_frame() -> np.ndarray:
    return cv2.cvtColor(
        cv2.imread(str(DEMO / "images" / "page.png"), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR
    )


@needs_demo
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_fused_model_on_a_uint8_frame_matches_the_original_on_the_float_path(name: str) -> None:
    model, manifest = demo_model(name)
    fused = fuse_preprocessing(model, manifest.preprocess)
    original_session, fused_session = session(model), session(fused)
    float_prep = Preprocessor.for_inputs(
        manifest.preprocess, tensor_specs(original_session.get_inputs())
    )
    uint8_prep = Preprocessor.for_inputs(
        manifest.preprocess, tensor_specs(fused_session.get_inputs())
    )
    assert not float_prep.fused and uint8_prep.fused
    for frame in (video_frame(60), video_frame(150), page_frame()):
        tensor, geometry = float_prep.prep(frame)
        image, fused_geometry = uint8_prep.prep(frame)
        assert geometry == fused_geometry and image.dtype == np.uint8
        expected = original_session.run(None, {float_prep.input_name: tensor})
        got = fused_session.run(None, {uint8_prep.input_name: image})
        assert len(got) == len(expected)
        for want, have in zip(expected, got, strict=True):
            assert want.shape == have.shape
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)


@needs_demo
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_fused_model_keeps_names_opset_and_ir_and_takes_a_uint8_nhwc_frame(name: str) -> None:
    model, manifest = demo_model(name)
    fused = fuse_preprocessing(model, manifest.preprocess)
    onnx.checker.check_model(fused, full_check=True)
    assert fused.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in fused.opset_import] == [
        (o.domain, o.version) for o in model.opset_import
    ]
    assert [o.name for o in fused.graph.output] == [o.name for o in model.graph.output]
    (original_input,) = model.graph.input
    (frame_input,) = fused.graph.input
    assert frame_input.name == original_input.name
    assert frame_input.type.tensor_type.elem_type == TensorProto.UINT8
    dims = frame_input.type.tensor_type.shape.dim
    original_dims = original_input.type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[3].dim_value == 3
    for fused_dim, original_dim in zip(dims[1:3], original_dims[2:4], strict=True):
        assert fused_dim.dim_value == original_dim.dim_value  # 0 for both when dynamic
        assert bool(fused_dim.dim_param) == bool(original_dim.dim_param)
    recorded = json.loads({p.key: p.value for p in fused.metadata_props}[FUSED_METADATA_KEY])
    assert recorded["mean"] == list(manifest.preprocess.mean)
    assert len(model.graph.node) < len(fused.graph.node)  # the original is left untouched


def _identity_model(
    layout: str, elem_type: int = TensorProto.FLOAT, opset: int = 12, size: int | str = "h"
) -> onnx.ModelProto:
    shape = [1, 3, size, size] if layout == "NCHW" else [1, size, size, 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("image", elem_type, shape)],
        [helper.make_tensor_value_info("out", elem_type, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["f32", "f16"])
def test_fused_normalisation_equals_the_preprocessor_exactly(
    layout: str, color: str, elem_type: int
) -> None:
    """An identity model shows what the fused nodes compute: scale, mean/std, order, layout."""
    spec = PreprocessSpec(
        resize="multiple",
        color=color,
        layout=layout,  # type: ignore[arg-type]
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    fused = session(fuse_preprocessing(_identity_model(layout, elem_type), spec))
    frame = np.random.default_rng(1).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    shape = (1, 3, None, None) if layout == "NCHW" else (1, None, None, 3)
    tensor, _ = Preprocessor(spec, TensorSpec("image", shape, F32)).prep(frame)
    (out,) = fused.run(None, {"image": frame[None]})
    if elem_type == TensorProto.FLOAT16:
        assert out.dtype == np.float16
        np.testing.assert_allclose(out, tensor.astype(np.float16), rtol=1e-3, atol=1e-3)
    else:
        np.testing.assert_allclose(out, tensor, rtol=0, atol=1e-6)


def test_fusing_avoids_name_clashes_with_the_graph() -> None:
    model = _identity_model("NCHW")
    model.graph.node[0].name = "edge_agent_preprocess/image"
    fused = fuse_preprocessing(model, PreprocessSpec())
    names = [out for node in fused.graph.node for out in node.output]
    assert len(names) == len(set(names))
    onnx.checker.check_model(fused)


def test_a_subgraph_reading_the_input_is_rewired_too() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [1, 3, "h", "w"])],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant",
                [],
                ["cond"],
                value=helper.make_tensor("c", TensorProto.BOOL, [], [True]),
            ),
            helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch),
        ],
        "with_if",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    spec = PreprocessSpec(mean=(0.5,) * 3, std=(0.5,) * 3)
    frame = np.full((1, 4, 4, 3), 255, np.uint8)
    (out,) = session(fuse_preprocessing(model, spec)).run(None, {"image": frame})
    np.testing.assert_allclose(out, np.ones((1, 3, 4, 4)), atol=1e-6)


def _two_inputs_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["a"], ["out"]),
            helper.make_node("Identity", ["b"], ["out2"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("out2", TensorProto.FLOAT, None),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def _int_input_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "ints",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def _one_channel_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])],
        "gray",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


@pytest.mark.parametrize(
    ("model", "spec", "message"),
    [
        (_two_inputs_model(), PreprocessSpec(), "2 inputs, set input_name"),
        (
            _two_inputs_model(),
            PreprocessSpec(input_name="c"),
            r"input 'c' not found .*\['a', 'b'\]",
        ),
        (_int_input_model(), PreprocessSpec(), "input 'ids' is INT64"),
        (_one_channel_model(), PreprocessSpec(), "not a 3-channel NCHW image"),
        (_identity_model("NCHW", size=8), PreprocessSpec(layout="NHWC"), "not a 3-channel NHWC"),
        (_identity_model("NCHW", opset=6), PreprocessSpec(), "opset 6 < 7"),
    ],
    ids=["ambiguous", "missing", "int", "one-channel", "layout", "old-opset"],
)
def test_a_model_that_cannot_be_fused_is_refused(
    model: onnx.ModelProto, spec: PreprocessSpec, message: str
) -> None:
    with pytest.raises(SpecMismatchError, match=message):
        fuse_preprocessing(model, spec)


def test_a_fused_model_is_not_fused_twice() -> None:
    fused = fuse_preprocessing(_identity_model("NCHW"), PreprocessSpec())
    with pytest.raises(SpecMismatchError, match="input 'image' is UINT8"):
        fuse_preprocessing(fused, PreprocessSpec())


@needs_demo
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_demo_manifests_fit_their_models_before_and_after_fusing(name: str) -> None:
    model, manifest = demo_model(name)
    for candidate in (model, fuse_preprocessing(model, manifest.preprocess)):
        s = session(candidate)
        assert check_fits_input(manifest.preprocess, tensor_specs(s.get_inputs())).name == "x"
        output = check_fits_head(tensor_specs(s.get_outputs()), manifest.head)
        assert output.name == s.get_outputs()[0].name


def test_check_fits_input_returns_the_image_input() -> None:
    inputs = [TensorSpec("x", (None, 3, None, None), F32)]
    assert check_fits_input(PreprocessSpec(resize="multiple"), inputs) is inputs[0]
    with pytest.raises(SpecMismatchError, match="the model has no inputs"):
        check_fits_input(PreprocessSpec(), [])


def _out(*shape: int | None, name: str = "out") -> list[TensorSpec]:
    return [TensorSpec(name, tuple(shape), F32)]


@pytest.mark.parametrize(
    ("outputs", "head"),
    [
        (_out(None, 4), HeadSpec(kind="classify", labels=("0", "90", "180", "270"))),
        (_out(1, None), HeadSpec(kind="classify", labels=("a", "b"))),
        (_out(1, 1000), HeadSpec(kind="classify")),
        (_out(1, 84, 8400), HeadSpec(kind="detect_yolo", labels=tuple(map(str, range(80))))),
        (_out(1, 8400, 84), HeadSpec(kind="detect_yolo", labels=tuple(map(str, range(80))))),
        (_out(1, 6, None), HeadSpec(kind="detect_yolo")),
        (_out(None, 1, None, None), HeadSpec(kind="text_detect_db")),
        (
            _out(1, 4, name="a") + _out(1, 1, 8, 8, name="prob"),
            HeadSpec(kind="text_detect_db", output_name="prob"),
        ),
    ],
    ids=[
        "classify",
        "classify-dynamic",
        "classify-nolabels",
        "yolo",
        "yolo-transposed",
        "yolo-dynamic",
        "db",
        "named",
    ],
)
def test_outputs_that_fit_the_head_are_accepted(outputs: list[TensorSpec], head: HeadSpec) -> None:
    chosen = check_fits_head(outputs, head)
    assert chosen.name == (head.output_name or outputs[0].name)


@pytest.mark.parametrize(
    ("outputs", "head", "message"),
    [
        (_out(1, 5), HeadSpec(kind="classify", labels=("a", "b")), "5 classes but 2 labels"),
        (_out(1, 5, 1), HeadSpec(kind="classify"), r"classifier needs \[N, classes\]"),
        (
            _out(1, 85, 8400),
            HeadSpec(kind="detect_yolo", labels=tuple(map(str, range(80)))),
            "80 labels need an axis of 4\\+80=84",
        ),
        (
            _out(1, 84),
            HeadSpec(kind="detect_yolo"),
            r"detect_yolo needs \[N, 4\+classes, anchors\]",
        ),
        (_out(1, 4, 3), HeadSpec(kind="detect_yolo"), "no axis holds 4 box values"),
        (_out(1, 2, 32, 32), HeadSpec(kind="text_detect_db"), r"probability map \[N, 1, H, W\]"),
        (_out(1, 32, 32), HeadSpec(kind="text_detect_db"), "probability map"),
        (
            _out(1, 4),
            HeadSpec(kind="classify", output_name="probs"),
            r"output 'probs' not in .*\['out'\]",
        ),
        ([], HeadSpec(kind="classify"), "the model has no outputs"),
    ],
    ids=[
        "labels",
        "classify-rank",
        "yolo-labels",
        "yolo-rank",
        "yolo-small",
        "db-channels",
        "db-rank",
        "name",
        "none",
    ],
)
def test_outputs_that_do_not_fit_the_head_are_refused(
    outputs: list[TensorSpec], head: HeadSpec, message: str
) -> None:
    with pytest.raises(SpecMismatchError, match=message):
        check_fits_head(outputs, head)
