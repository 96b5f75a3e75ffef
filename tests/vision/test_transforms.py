"""Preprocessing: geometry per resize mode, the float and fused (uint8) paths, every bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.models.manifest import PreprocessSpec
from agent.runtime.base import TensorSpec
from agent.vision.transforms import Geometry, Preprocessor, TransformError

F32 = np.dtype(np.float32)
U8 = np.dtype(np.uint8)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
DYNAMIC_NCHW = TensorSpec("x", (None, 3, None, None), F32)
FUSED_DYNAMIC = TensorSpec("x", (1, None, None, 3), U8)


def _frame(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _rectangle_frame(
    box: tuple[int, int, int, int], width: int = 640, height: int = 480
) -> np.ndarray:
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 255
    return frame


def _naive_normalise(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The textbook formula, written independently of the implementation under test."""
    image = image_bgr[..., ::-1] if spec.color == "rgb" else image_bgr
    x = (image.astype(np.float64) * spec.scale - np.array(spec.mean)) / np.array(spec.std)
    x = x.astype(np.float32)
    return x.transpose(2, 0, 1)[None] if spec.layout == "NCHW" else x[None]


def _float_spec(spec: PreprocessSpec, width: int, height: int) -> TensorSpec:
    shape = (1, 3, height, width) if spec.layout == "NCHW" else (1, height, width, 3)
    return TensorSpec("x", shape, F32)


MODES = [
    PreprocessSpec(resize="stretch", height=256, width=320, **IMAGENET),
    PreprocessSpec(resize="letterbox", height=320, width=320, pad_value=114),
    PreprocessSpec(resize="short_side_crop", height=224, width=224, resize_short=256, **IMAGENET),
    PreprocessSpec(resize="multiple", multiple=32, mean=(0.5,) * 3, std=(0.5,) * 3),
    PreprocessSpec(resize="stretch", height=96, width=128, color="bgr", layout="NHWC", **IMAGENET),
]


@pytest.mark.parametrize("spec", MODES, ids=lambda s: f"{s.resize}-{s.layout}-{s.color}")
@pytest.mark.parametrize("size", [(640, 480), (650, 470), (300, 500)])
def test_float_path_is_the_normalised_uint8_path(
    spec: PreprocessSpec, size: tuple[int, int]
) -> None:
    frame = _frame(*size)
    fused = Preprocessor(spec, FUSED_DYNAMIC)
    image, geometry = fused.prep(frame)
    float_input = (
        DYNAMIC_NCHW
        if spec.resize == "multiple"
        else _float_spec(spec, geometry.input_width, geometry.input_height)
    )
    float_preprocessor = Preprocessor(spec, float_input)
    tensor, float_geometry = float_preprocessor.prep(frame)
    assert float_geometry == geometry == float_preprocessor.geometry(*size)
    assert image.dtype == np.uint8 and image.shape == (
        1,
        geometry.input_height,
        geometry.input_width,
        3,
    )
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, _naive_normalise(image[0], spec), rtol=0, atol=2e-6)


def test_multiple_keeps_a_640x480_frame_and_hands_it_over_without_a_copy() -> None:
    spec = PreprocessSpec(resize="multiple", multiple=32)
    frame = _frame()
    image, geometry = Preprocessor(spec, FUSED_DYNAMIC).prep(frame)
    assert image.shape == (1, 480, 640, 3)
    assert np.shares_memory(image, frame)
    assert geometry == Geometry.identity(640, 480)
    tensor, _ = Preprocessor(spec, DYNAMIC_NCHW).prep(frame)
    assert tensor.shape == (1, 3, 480, 640)


def test_multiple_rounds_the_frame_down_and_uses_fixed_model_dims() -> None:
    spec = PreprocessSpec(resize="multiple", multiple=32)
    _, geometry = Preprocessor(spec, DYNAMIC_NCHW).prep(_frame(650, 470))
    assert (geometry.input_width, geometry.input_height) == (640, 448)
    _, tiny = Preprocessor(spec, DYNAMIC_NCHW).prep(_frame(20, 10))
    assert (tiny.input_width, tiny.input_height) == (32, 32)
    fixed = TensorSpec("x", (1, 3, 320, None), F32)
    tensor, geometry = Preprocessor(spec, fixed).prep(_frame(650, 470))
    assert tensor.shape == (1, 3, 320, 640)
    assert geometry.scale_y == pytest.approx(320 / 470)


def test_size_comes_from_the_engine_when_the_spec_has_none() -> None:
    spec = PreprocessSpec(resize="letterbox")
    tensor, geometry = Preprocessor(spec, TensorSpec("images", (1, 3, 384, 640), F32)).prep(
        _frame()
    )
    assert tensor.shape == (1, 3, 384, 640)
    assert (geometry.input_width, geometry.input_height) == (640, 384)


RECT = (200, 150, 360, 300)


@pytest.mark.parametrize(
    ("spec", "frame_size"),
    [
        (PreprocessSpec(resize="stretch", height=256, width=320), (640, 480)),
        (PreprocessSpec(resize="letterbox", height=320, width=320, pad_value=0), (640, 480)),
        (PreprocessSpec(resize="letterbox", height=320, width=320, pad_value=0), (400, 640)),
        (
            PreprocessSpec(resize="short_side_crop", height=224, width=224, resize_short=256),
            (640, 480),
        ),
        (PreprocessSpec(resize="multiple", multiple=32), (640, 480)),
        (PreprocessSpec(resize="multiple", multiple=32), (650, 470)),
    ],
    ids=[
        "stretch",
        "letterbox-wide",
        "letterbox-tall",
        "short_side_crop",
        "multiple",
        "multiple-round",
    ],
)
def test_a_box_found_in_the_input_maps_back_onto_the_frame_box(
    spec: PreprocessSpec, frame_size: tuple[int, int]
) -> None:
    frame = _rectangle_frame(RECT, *frame_size)
    image, geometry = Preprocessor(spec, FUSED_DYNAMIC).prep(frame)
    ys, xs = np.nonzero(image[0, ..., 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    mapped = geometry.boxes_to_frame(found)[0]
    tolerance = 1.5 / min(geometry.scale_x, geometry.scale_y)
    np.testing.assert_allclose(mapped, RECT, atol=tolerance)


def test_letterbox_pads_with_pad_value_and_centres_the_image() -> None:
    spec = PreprocessSpec(resize="letterbox", height=320, width=320, pad_value=114)
    image, geometry = Preprocessor(spec, FUSED_DYNAMIC).prep(np.zeros((480, 640, 3), np.uint8))
    assert (geometry.pad_x, geometry.pad_y) == (0, 40)
    assert geometry.scale_x == geometry.scale_y == 0.5
    assert (image[0, :40] == 114).all() and (image[0, 280:] == 114).all()
    assert (image[0, 40:280] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(8, 900),
    height=st.integers(8, 900),
    mode=st.sampled_from(["stretch", "letterbox", "short_side_crop", "multiple"]),
)
def test_geometry_is_consistent_for_any_frame_size(width: int, height: int, mode: str) -> None:
    spec = PreprocessSpec(resize=mode, height=96, width=128, resize_short=128)  # type: ignore[arg-type]
    if mode == "multiple":
        spec = PreprocessSpec(resize="multiple", multiple=32)
    image, geometry = Preprocessor(spec, FUSED_DYNAMIC).prep(_frame(width, height))
    assert image.shape == (1, geometry.input_height, geometry.input_width, 3)
    points = np.array([[0.0, 0.0], [width, height], [width / 3, height / 2]])
    np.testing.assert_allclose(geometry.to_frame(geometry.to_input(points)), points, atol=1e-9)
    corners = geometry.to_input(np.array([[0.0, 0.0], [width, height]]))
    if mode == "short_side_crop":  # the crop lies inside the resized frame
        assert (corners[0] <= 1e-9).all()
        assert (corners[1] >= [geometry.input_width - 1e-9, geometry.input_height - 1e-9]).all()
    else:  # the whole frame lands inside the input
        assert (corners >= -1e-9).all()
        assert (corners[1] <= [geometry.input_width + 1e-9, geometry.input_height + 1e-9]).all()


def test_boxes_are_clipped_to_the_frame() -> None:
    geometry = Geometry(640, 480, 320, 320, 0.5, 0.5, pad_y=40)
    boxes = geometry.boxes_to_frame(np.array([[-10.0, 0.0, 400.0, 330.0]]))
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 640.0, 480.0]])
    raw = geometry.boxes_to_frame(np.array([[-10.0, 0.0, 400.0, 330.0]]), clip=False)
    np.testing.assert_allclose(raw, [[-20.0, -80.0, 800.0, 580.0]])


def test_for_inputs_picks_the_named_input() -> None:
    inputs = [TensorSpec("scale", (1, 2), F32), TensorSpec("images", (1, 3, 64, 64), F32)]
    spec = PreprocessSpec(input_name="images", resize="stretch")
    assert Preprocessor.for_inputs(spec, inputs).input_name == "images"
    with pytest.raises(TransformError, match=r"2 inputs .*input_name"):
        Preprocessor.for_inputs(PreprocessSpec(), inputs)


@pytest.mark.parametrize(
    ("spec", "tensor", "message"),
    [
        (PreprocessSpec(height=64, width=64), TensorSpec("x", (1, 3, 64), F32), "rank 3"),
        (PreprocessSpec(height=64, width=64), TensorSpec("x", (1, 1, 64, 64), F32), "channels 1"),
        (PreprocessSpec(height=64, width=64), TensorSpec("x", (2, 3, 64, 64), F32), "batch 2"),
        (
            PreprocessSpec(height=64, width=64),
            TensorSpec("x", (1, 3, 64, 64), np.dtype(np.float64)),
            "dtype float64",
        ),
        (
            PreprocessSpec(height=64, width=64),
            TensorSpec("x", (1, 3, 64, 64), np.dtype(np.int8)),
            "dtype int8",
        ),
        (
            PreprocessSpec(height=32, width=64),
            TensorSpec("x", (1, 3, 64, 64), F32),
            "preprocess.height 32 but the model's height is 64",
        ),
        (PreprocessSpec(resize="letterbox"), DYNAMIC_NCHW, "dynamic height/width"),
        (
            PreprocessSpec(input_name="images"),
            TensorSpec("x", (1, 3, 64, 64), F32),
            r"input 'images' not in .*\['x'\]",
        ),
        (
            PreprocessSpec(resize="short_side_crop", height=224, width=224, resize_short=200),
            TensorSpec("x", (1, 3, 224, 224), F32),
            "resize_short 200 is smaller than the crop",
        ),
        (
            PreprocessSpec(height=64, width=64),
            TensorSpec("x", (1, 3, 64, 64), U8),
            r"NHWC channels 64, needs 3 \(a uint8 input is a fused graph",
        ),
        (
            PreprocessSpec(layout="NHWC", height=64, width=64),
            TensorSpec("x", (1, 64, 64, 4), F32),
            "NHWC channels 4",
        ),
    ],
    ids=[
        "rank",
        "channels",
        "batch",
        "float64",
        "int8",
        "height",
        "dynamic",
        "name",
        "resize_short",
        "uint8-nchw",
        "nhwc-channels",
    ],
)
def test_a_spec_that_does_not_fit_the_input_is_refused(
    spec: PreprocessSpec, tensor: TensorSpec, message: str
) -> None:
    with pytest.raises(TransformError, match=message):
        Preprocessor(spec, tensor)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not a frame", "uint8 numpy array, got str"),
        (np.zeros((48, 64, 3), np.float32), "uint8 numpy array, got float32"),
        (np.zeros((48, 64), np.uint8), r"HxWx3 BGR, got shape \(48, 64\)"),
        (np.zeros((48, 64, 4), np.uint8), r"got shape \(48, 64, 4\)"),
        (np.zeros((0, 64, 3), np.uint8), r"got shape \(0, 64, 3\)"),
    ],
    ids=["str", "float", "gray", "bgra", "empty"],
)
def test_a_frame_that_is_not_a_bgr_image_is_refused(frame: object, message: str) -> None:
    preprocessor = Preprocessor(PreprocessSpec(height=32, width=32), DYNAMIC_NCHW)
    with pytest.raises(TransformError, match=message):
        preprocessor.prep(frame)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 480, 320, 320, 0.5, 0.5), "sizes must be >= 1"),
        ((640, 480, 320, 320, 0.0, 0.5), "scales"),
    ],
)
def test_an_impossible_geometry_is_refused(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(TransformError, match=message):
        Geometry(*args)  # type: ignore[arg-type]


def test_colour_order_follows_the_spec() -> None:
    """Camera frames are BGR: an rgb model gets red in channel 0, a bgr model in channel 2."""
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :, 2] = 255
    tensor, _ = Preprocessor(PreprocessSpec(height=32, width=32, color="rgb"), DYNAMIC_NCHW).prep(
        frame
    )
    assert np.allclose(tensor[0, 0], 1.0) and np.allclose(tensor[0, 1:], 0.0)
    tensor, _ = Preprocessor(PreprocessSpec(height=32, width=32, color="bgr"), DYNAMIC_NCHW).prep(
        frame
    )
    assert np.allclose(tensor[0, 2], 1.0) and np.allclose(tensor[0, :2], 0.0)
