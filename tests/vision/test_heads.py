"""Heads: classify, YOLOv8 detect and DB text detect, on real outputs where a real model exists.

The text detectors (PP-OCRv4, PP-OCRv6) and the orientation classifier are the real
demo models run by ONNX Runtime on real photos and frames of the demo video. No
pretrained YOLO model ships in a wheel reachable from here, so the YOLO head is
tested on outputs built to the real YOLOv8 layout and on a small ONNX graph, made
with onnx.helper, that produces that layout from an image.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.models.graph import check_fits_head, fuse_preprocessing
from agent.models.manifest import HeadSpec, Manifest, PreprocessSpec
from agent.runtime.base import TensorSpec
from agent.vision.textdet import box_score, order_quad, unclip
from agent.vision.transforms import (
    Classification,
    Detection,
    Geometry,
    Prediction,
    Preprocessor,
    TransformError,
    make_head,
    nms,
    softmax,
)

DEMO = Path(__file__).resolve().parents[2] / "demo"
needs_demo = pytest.mark.skipif(
    not (DEMO / "models").is_dir(), reason="demo models missing: run `make setup`"
)
ORT_THREADS = 2
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}
PP_OCR_SHORT_SIDE = 736
"""PP-OCR's own pipeline scales a small image up until its short side is 736 pixels."""
PAGE_SCENE_FRAMES = (50, 65, 80)
"""Frames of the demo video that pan over page.png (the second photo, frames 45-89)."""
ROTATIONS = {
    0: None,
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


# ---------------------------------------------------------------- helpers


class DemoModel:
    """A demo model served by ONNX Runtime with its manifest's preprocessing and head."""

    def __init__(self, name: str, fused: bool = False, head: HeadSpec | None = None) -> None:
        folder = DEMO / "models" / name
        self.manifest = Manifest.read(folder / "manifest.json")
        model = onnx.load(str(folder / "model.onnx"))
        if fused:
            model = fuse_preprocessing(model, self.manifest.preprocess)
        options = ort.SessionOptions()
        options.intra_op_num_threads = ORT_THREADS
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        specs = [
            TensorSpec(
                a.name,
                tuple(d if isinstance(d, int) else None for d in a.shape),
                np.dtype(ORT_DTYPES[a.type]),
            )
            for a in self.session.get_inputs()
        ]
        self.preprocessor = Preprocessor.for_inputs(self.manifest.preprocess, specs)
        self.head = make_head(head or self.manifest.head)

    def outputs(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Geometry]:
        tensor, geometry = self.preprocessor.prep(frame)
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {self.preprocessor.input_name: tensor})
        return dict(zip(names, values, strict=True)), geometry

    def __call__(self, frame: np.ndarray) -> Prediction:
        return self.head(*self.outputs(frame))


def photo(name: str, short_side: int | None = None) -> np.ndarray:
    gray = cv2.imread(str(DEMO / "images" / name), cv2.IMREAD_GRAYSCALE)
    if short_side is not None:
        factor = short_side / min(gray.shape)
        gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def ink(frame: np.ndarray) -> np.ndarray:
    """Pixels clearly darker than their neighbourhood: pen and print strokes."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return (
        cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 31, 20)
        > 0
    )


def box_mask(shape: tuple[int, ...], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
    return mask


def assert_inside(prediction: Prediction, frame: np.ndarray) -> None:
    height, width = frame.shape[:2]
    for item in prediction.items:
        assert isinstance(item, Detection)
        x1, y1, x2, y2 = item.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert item.polygon is not None and len(item.polygon) == 4
        xs, ys = zip(*item.polygon, strict=True)
        assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(item.box)


# ---------------------------------------------------------------- prediction and classify


def test_prediction_summarises_its_decisions() -> None:
    classified = Prediction("classify", (Classification("cat", 0.7), Classification("dog", 0.2)))
    assert (classified.scores, classified.labels, classified.count) == ((0.7,), ("cat",), 1)
    assert classified.top_label == "cat"
    detected = Prediction(
        "detect", (Detection((0, 0, 2, 2), 0.4, "a"), Detection((1, 1, 3, 3), 0.9, "b"))
    )
    assert (detected.scores, detected.labels, detected.count, detected.top_label) == (
        (0.4, 0.9),
        ("a", "b"),
        2,
        "b",
    )
    empty = Prediction("text_detect", ())
    assert (empty.scores, empty.count, empty.top_label) == ((), 0, None)
    with pytest.raises(TransformError, match="x1 <= x2"):
        Detection((5, 0, 2, 2), 0.5, "a")


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([1000.0, 1001.0, -1e30]))
    np.testing.assert_allclose(probs, [1 / (1 + np.e), np.e / (1 + np.e), 0.0])
    small = np.array([0.1, -0.3, 2.0])
    np.testing.assert_allclose(softmax(small), np.exp(small) / np.exp(small).sum())


def test_classify_returns_top_k_with_labels_or_indices() -> None:
    logits = {"out": np.array([[0.0, 3.0, 1.0, 2.0]], dtype=np.float32)}
    geometry = Geometry.identity(8, 8)
    labelled = make_head(HeadSpec(kind="classify", labels=("a", "b", "c", "d"), top_k=3))(
        logits, geometry
    )
    assert [c.label for c in labelled.items] == ["b", "d", "c"]
    assert sum(c.score for c in labelled.items) < 1.0
    assert labelled.scores == (pytest.approx(softmax(logits["out"][0])[1]),)
    indexed = make_head(HeadSpec(kind="classify", top_k=10))(logits, geometry)
    assert [c.label for c in indexed.items] == ["1", "3", "2", "0"]
    probs = {"out": np.array([[0.1, 0.6, 0.3]], dtype=np.float32)}
    raw = make_head(HeadSpec(kind="classify", softmax=False, top_k=1))(probs, geometry)
    assert raw.items == (Classification("1", pytest.approx(0.6)),)


@pytest.mark.parametrize(
    ("spec", "outputs", "message"),
    [
        (HeadSpec(kind="classify"), {"out": np.zeros((4,))}, r"\[N, classes\], got \(4,\)"),
        (
            HeadSpec(kind="classify", labels=("a",)),
            {"out": np.zeros((1, 3))},
            "3 classes but 1 labels",
        ),
        (
            HeadSpec(kind="classify", output_name="p"),
            {"out": np.zeros((1, 3))},
            r"'p' not in .*\['out'\]",
        ),
        (HeadSpec(kind="classify"), {}, "no outputs"),
        (HeadSpec(kind="detect_yolo"), {"out": np.zeros((1, 84))}, r"\[1, 4\+classes, anchors\]"),
        (HeadSpec(kind="detect_yolo"), {"out": np.zeros((1, 4, 100))}, "4\\+classes"),
        (
            HeadSpec(kind="detect_yolo", labels=("a", "b")),
            {"out": np.zeros((1, 7, 100))},
            "2 labels need an axis of 6",
        ),
        (HeadSpec(kind="text_detect_db"), {"out": np.zeros((1, 2, 8, 8))}, r"\[1, 1, H, W\]"),
        (HeadSpec(kind="text_detect_db"), {"out": np.zeros((8, 8))}, r"got \(8, 8\)"),
    ],
    ids=[
        "classify-rank",
        "classify-labels",
        "missing",
        "none",
        "yolo-rank",
        "yolo-narrow",
        "yolo-labels",
        "db-channels",
        "db-rank",
    ],
)
def test_outputs_that_do_not_fit_the_head_raise_a_clear_error(
    spec: HeadSpec, outputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(TransformError, match=message):
        make_head(spec)(outputs, Geometry.identity(8, 8))


# ---------------------------------------------------------------- the real orientation classifier


@needs_demo
def test_orientation_model_outputs_probabilities_already() -> None:
    """Its graph ends in Softmax: the manifest's head must not apply softmax a second time."""
    model = DemoModel("orientation-0.0.11")
    outputs, _ = model.outputs(photo("page.png"))
    (probs,) = outputs.values()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    head = make_head(model.manifest.head.model_copy(update={"softmax": False}))
    top = head(outputs, Geometry.identity(8, 8)).items[0]
    assert top.score == pytest.approx(float(probs.max()))


@needs_demo
@pytest.mark.parametrize("fused", [False, True], ids=["float", "fused"])
def test_orientation_follows_the_rotation_of_a_printed_page(fused: bool) -> None:
    model = DemoModel("orientation-0.0.11", fused=fused, head=_probability_head())
    page = photo("page.png")
    for angle, rotation in ROTATIONS.items():
        frame = page if rotation is None else cv2.rotate(page, rotation)
        prediction = model(frame)
        assert prediction.top_label == str(angle), f"page.png rotated {angle}: {prediction.items}"
        assert prediction.scores[0] > 0.4


@needs_demo
def test_orientation_of_handwriting_turns_with_the_image() -> None:
    """On text.png (handwritten maths on ruled paper, upright) the real model answers 180.

    It is wrong about the absolute orientation at every rotation, but consistently so:
    its answer turns with the image. That relation is what is asserted here.
    """
    model = DemoModel("orientation-0.0.11", head=_probability_head())
    text = photo("text.png")
    labels = {
        angle: model(text if r is None else cv2.rotate(text, r)).top_label
        for angle, r in ROTATIONS.items()
    }
    base = int(labels[0] or 0)
    for angle, label in labels.items():
        assert label == str((base + angle) % 360), labels


def _probability_head() -> HeadSpec:
    manifest = Manifest.read(DEMO / "models" / "orientation-0.0.11" / "manifest.json")
    return manifest.head.model_copy(update={"softmax": False})


# ---------------------------------------------------------------- the real DB text detectors


@needs_demo
@pytest.mark.parametrize("name", ["text-det-v4", "text-det-v6"])
def test_text_detector_finds_the_lines_of_a_printed_page(name: str) -> None:
    frame = photo("page.png")
    prediction = DemoModel(name)(frame)
    assert prediction.task == "text_detect"
    assert 4 <= prediction.count <= 12, prediction.items
    assert_inside(prediction, frame)
    strokes = ink(frame)
    boxes = [item.box for item in prediction.items]
    for box in boxes:
        assert strokes[box_mask(frame.shape, [box])].mean() > 0.05, f"a box without ink: {box}"
    assert (strokes & box_mask(frame.shape, boxes)).sum() >= 0.7 * strokes.sum()
    lines = [b for b in boxes if b[2] - b[0] > 2 * (b[3] - b[1])]
    assert len(lines) >= 0.8 * len(boxes), "printed text lines are wider than tall"
    assert all(0.5 <= s <= 1.0 for s in prediction.scores)


@needs_demo
def test_text_detector_finds_handwriting_at_pp_ocr_scale() -> None:
    """text.png at its own 448x172 size is too small for PP-OCRv4 (no text found); PP-OCR's
    pipeline scales it to a short side of 736 first, and so does this test."""
    frame = photo("text.png", short_side=PP_OCR_SHORT_SIDE)
    prediction = DemoModel("text-det-v4")(frame)
    assert 3 <= prediction.count <= 20, prediction.items
    assert_inside(prediction, frame)
    strokes = ink(frame)
    inked = [
        item
        for item in prediction.items
        if strokes[box_mask(frame.shape, [item.box])].mean() > 0.05
    ]
    assert len(inked) >= prediction.count / 2


@needs_demo
@pytest.mark.parametrize("name", ["text-det-v4", "text-det-v6"])
def test_text_detector_finds_nothing_on_a_blank_grey_frame(name: str) -> None:
    prediction = DemoModel(name)(np.full((480, 640, 3), 128, dtype=np.uint8))
    assert prediction.count == 0 and prediction.top_label is None


@needs_demo
def test_fused_text_detector_reads_the_page_scene_of_the_demo_video() -> None:
    model = DemoModel("text-det-v4", fused=True)
    capture = cv2.VideoCapture(str(DEMO / "video.mp4"))
    try:
        for index in PAGE_SCENE_FRAMES:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            assert ok and frame.shape == (480, 640, 3)
            tensor, _ = model.preprocessor.prep(frame)
            assert np.shares_memory(tensor, frame)  # a 640x480 frame goes in as it is
            prediction = model(frame)
            assert prediction.count >= 4, f"frame {index}: {prediction.items}"
            assert_inside(prediction, frame)
    finally:
        capture.release()


# ---------------------------------------------------------------- DB post-processing on known maps


DB = HeadSpec(kind="text_detect_db", labels=("text",))


def test_a_bright_bar_becomes_one_unclipped_box() -> None:
    prob = np.zeros((1, 1, 64, 96), dtype=np.float32)
    prob[0, 0, 20:30, 10:60] = 0.9
    prediction = make_head(DB)({"out": prob}, Geometry.identity(96, 64))
    (item,) = prediction.items
    assert item.label == "text" and item.score == pytest.approx(0.9, abs=1e-3)
    x1, y1, x2, y2 = item.box
    assert x1 < 10 and y1 < 20 and x2 > 59 and y2 > 29
    w, h = 49.0, 9.0  # minAreaRect of the bar's pixel centres
    grow = w * h * DB.unclip_ratio / (2 * (w + h))
    assert (x2 - x1, y2 - y1) == pytest.approx((w + 2 * grow, h + 2 * grow), abs=0.5)


def test_a_map_at_lower_resolution_is_scaled_to_the_input_then_the_frame() -> None:
    prob = np.zeros((1, 1, 32, 48), dtype=np.float32)
    prob[0, 0, 10:15, 5:30] = 0.8
    letterbox = Geometry(640, 480, 96, 64, 0.1, 0.1, pad_x=16.0)
    (item,) = make_head(DB)({"out": prob}, letterbox).items
    on_map = make_head(DB)({"out": prob}, Geometry.identity(48, 32)).items[0]
    expected = letterbox.boxes_to_frame(np.array([on_map.box]) * 2)[0]
    np.testing.assert_allclose(item.box, expected, atol=1e-6)


def test_a_rotated_bar_keeps_its_angle() -> None:
    prob = np.zeros((1, 1, 128, 128), dtype=np.float32)
    quad = cv2.boxPoints(((64.0, 64.0), (80.0, 12.0), 30.0)).astype(np.int32)
    cv2.fillPoly(prob[0, 0], [quad], 1.0)
    (item,) = make_head(DB)({"out": prob}, Geometry.identity(128, 128)).items
    assert item.polygon is not None
    top_left, top_right = np.array(item.polygon[0]), np.array(item.polygon[1])
    angle = np.degrees(np.arctan2(*(top_right - top_left)[::-1]))
    assert abs(abs(angle) - 30) < 3


@pytest.mark.parametrize(
    ("value", "rows", "reason"),
    [(0.4, (20, 30), "below box_threshold"), (0.9, (20, 22), "thinner than min_size")],
)
def test_weak_or_thin_regions_are_dropped(value: float, rows: tuple[int, int], reason: str) -> None:
    prob = np.zeros((1, 1, 64, 96), dtype=np.float32)
    prob[0, 0, rows[0] : rows[1], 10:60] = value
    assert make_head(DB)({"out": prob}, Geometry.identity(96, 64)).count == 0, reason


def test_max_detections_keeps_the_best_boxes() -> None:
    prob = np.zeros((1, 1, 200, 100), dtype=np.float32)
    for i in range(6):
        prob[0, 0, 10 + 30 * i : 20 + 30 * i, 10:90] = 0.6 + 0.05 * i
    prediction = make_head(DB.model_copy(update={"max_detections": 2}))(
        {"out": prob}, Geometry.identity(100, 200)
    )
    assert prediction.scores == pytest.approx((0.85, 0.80), abs=1e-3)


def test_db_geometry_helpers() -> None:
    shuffled = np.array([[10.0, 5.0], [0.0, 0.0], [0.0, 5.0], [10.0, 0.0]])
    np.testing.assert_array_equal(order_quad(shuffled), [[0, 0], [10, 0], [10, 5], [0, 5]])
    centre, size, angle = unclip(((5.0, 5.0), (10.0, 10.0), 0.0), 1.6)
    assert size == pytest.approx((18.0, 18.0)) and centre == (5.0, 5.0) and angle == 0.0
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[:, :5] = 1.0
    assert box_score(
        prob, np.array([[0.0, 0.0], [9.0, 0.0], [9.0, 9.0], [0.0, 9.0]])
    ) == pytest.approx(0.5)


# ---------------------------------------------------------------- YOLOv8 head


LETTERBOX = Geometry(640, 480, 320, 320, 0.5, 0.5, pad_y=40.0)
LABELS = ("person", "car", "dog")
YOLO = HeadSpec(kind="detect_yolo", labels=LABELS, conf_threshold=0.25, iou_threshold=0.45)


def yolo_output(
    detections: list[tuple[tuple[float, float, float, float], int, float]],
    geometry: Geometry = LETTERBOX,
    classes: int = len(LABELS),
    anchors: int = 300,
) -> np.ndarray:
    """A [1, 4+C, A] YOLOv8 output holding these frame boxes, plus low-score background anchors."""
    rng = np.random.default_rng(7)
    out = np.zeros((4 + classes, anchors), dtype=np.float32)
    out[:2] = rng.uniform(0, 320, (2, anchors))
    out[2:4] = rng.uniform(4, 60, (2, anchors))
    out[4:] = rng.uniform(0, 0.2, (classes, anchors))
    slots = rng.choice(anchors, size=len(detections), replace=False)
    for slot, (box, cls, score) in zip(slots, detections, strict=True):
        (x1, y1), (x2, y2) = geometry.to_input(np.array(box, dtype=np.float64).reshape(2, 2))
        out[:4, slot] = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        out[4:, slot] = 0.0
        out[4 + cls, slot] = score
    return out[None]


def test_yolo_maps_letterboxed_boxes_back_to_frame_pixels() -> None:
    wanted = [
        ((100.0, 80.0, 220.0, 300.0), 0, 0.9),
        ((400.0, 200.0, 600.0, 330.0), 1, 0.8),
        ((10.0, 400.0, 60.0, 470.0), 2, 0.3),
    ]
    prediction = make_head(YOLO)({"output0": yolo_output(wanted)}, LETTERBOX)
    assert prediction.task == "detect" and prediction.count == 3
    for item, (box, cls, score) in zip(prediction.items, wanted, strict=True):
        np.testing.assert_allclose(item.box, box, atol=1e-3)
        assert (item.label, item.score) == (LABELS[cls], pytest.approx(score))
    assert prediction.top_label == "person"


def test_yolo_suppresses_overlaps_within_a_class_only() -> None:
    box = (100.0, 100.0, 300.0, 300.0)
    shifted = (110.0, 110.0, 310.0, 310.0)  # IoU with box ~0.82
    wanted = [(box, 0, 0.9), (shifted, 0, 0.8), (shifted, 1, 0.7), (box, 2, 0.2)]
    prediction = make_head(YOLO)({"output0": yolo_output(wanted)}, LETTERBOX)
    assert [(i.label, round(i.score, 3)) for i in prediction.items] == [
        ("person", 0.9),
        ("car", 0.7),
    ]


def test_yolo_reads_the_transposed_layout_the_same_way() -> None:
    wanted = [((50.0, 60.0, 150.0, 200.0), 1, 0.6), ((300.0, 100.0, 500.0, 400.0), 2, 0.95)]
    output = yolo_output(wanted)
    head = make_head(YOLO)
    assert head({"o": output}, LETTERBOX) == head({"o": output.transpose(0, 2, 1)}, LETTERBOX)


def test_yolo_without_labels_guesses_the_orientation_and_names_classes_by_index() -> None:
    wanted = [((50.0, 60.0, 150.0, 200.0), 4, 0.6)]
    output = yolo_output(wanted, classes=6)
    head = make_head(HeadSpec(kind="detect_yolo"))
    for layout in (output, output.transpose(0, 2, 1)):
        (item,) = head({"o": layout}, LETTERBOX).items
        assert item.label == "4"


def test_yolo_keeps_at_most_max_detections_best_first() -> None:
    wanted = [
        ((20.0 + 60 * i, 100.0, 70.0 + 60 * i, 150.0), i % 3, 0.3 + 0.05 * i) for i in range(10)
    ]
    spec = YOLO.model_copy(update={"max_detections": 4})
    prediction = make_head(spec)({"o": yolo_output(wanted)}, LETTERBOX)
    assert prediction.scores == pytest.approx((0.75, 0.70, 0.65, 0.60))


def test_nms_suppresses_above_the_iou_threshold_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes[:2], scores[:2], 0.5).tolist() == [0, 1]  # IoU exactly 0.5 is kept
    assert nms(boxes[:2], scores[:2], 0.49).tolist() == [0]
    assert nms(boxes, scores, 0.45).tolist() == [0]
    assert nms(boxes, scores, 0.45, classes=np.array([0, 1, 1])).tolist() == [0, 1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def _tiny_yolo(cell: int = 16, grid: int = 4) -> onnx.ModelProto:
    """An image [1,3,64,64] -> [1, 4+2, 16] YOLOv8-layout graph: one anchor per 16x16 cell.

    Class "bright" scores a cell's mean brightness, class "grey" how close it is to
    mid-grey; the box of an anchor is its cell.
    """
    centres = (np.arange(grid) * cell + cell / 2).astype(np.float32)
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    boxes = np.stack(
        [cx.ravel(), cy.ravel(), np.full(grid * grid, cell), np.full(grid * grid, cell)]
    )
    anchors = grid * grid

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    nodes = [
        const("boxes", boxes[None].astype(np.float32)),
        const("flat", np.array([1, 1, anchors], dtype=np.int64)),
        const("half", np.array(0.5, dtype=np.float32)),
        const("two", np.array(2.0, dtype=np.float32)),
        const("one", np.array(1.0, dtype=np.float32)),
        helper.make_node("ReduceMean", ["images"], ["gray"], axes=[1], keepdims=1),
        helper.make_node(
            "AveragePool", ["gray"], ["cells"], kernel_shape=[cell, cell], strides=[cell, cell]
        ),
        helper.make_node("Reshape", ["cells", "flat"], ["bright"]),
        helper.make_node("Sub", ["bright", "half"], ["centred"]),
        helper.make_node("Abs", ["centred"], ["distance"]),
        helper.make_node("Mul", ["distance", "two"], ["scaled"]),
        helper.make_node("Sub", ["one", "scaled"], ["grey"]),
        helper.make_node("Concat", ["boxes", "bright", "grey"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, anchors])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("fused", [False, True], ids=["float", "fused"])
def test_yolo_end_to_end_through_onnxruntime(fused: bool) -> None:
    """frame -> letterbox -> ONNX Runtime -> head: found cells map back onto the painted regions.

    No pretrained YOLO weights ship in a wheel reachable from here; ``_tiny_yolo`` stands
    in for one with the real YOLOv8 output layout.
    """
    spec = PreprocessSpec(resize="letterbox", pad_value=0)
    head_spec = HeadSpec(kind="detect_yolo", labels=("bright", "grey"), conf_threshold=0.6)
    model = _tiny_yolo()
    if fused:
        model = fuse_preprocessing(model, spec)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    arg = session.get_inputs()[0]
    dtype = np.dtype(ORT_DTYPES[arg.type])
    tensor_spec = TensorSpec(arg.name, tuple(arg.shape), dtype)
    output_specs = [
        TensorSpec(o.name, tuple(o.shape), np.dtype(np.float32)) for o in session.get_outputs()
    ]
    assert check_fits_head(output_specs, head_spec).name == "output0"
    preprocessor = Preprocessor(spec, tensor_spec)
    # 640x480 letterboxed into 64x64: scale 0.1, 8 rows of padding on top. Cell (row 1, col 2)
    # covers input x 32..48, y 16..32, i.e. frame x 320..480, y 80..240.
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[80:240, 320:480] = 255
    frame[240:400, 0:160] = 128  # cell (row 2, col 0)
    tensor, geometry = preprocessor.prep(frame)
    (output,) = session.run(None, {arg.name: tensor})
    assert output.shape == (1, 6, 16)
    prediction = make_head(head_spec)({"output0": output}, geometry)
    found = {item.label: item for item in prediction.items}
    assert set(found) == {"bright", "grey"} and prediction.count == 2
    np.testing.assert_allclose(found["bright"].box, (320, 80, 480, 240), atol=1e-4)
    np.testing.assert_allclose(found["grey"].box, (0, 240, 160, 400), atol=1e-4)
    assert found["bright"].score == pytest.approx(1.0, abs=1e-5)
    assert prediction.top_label == "bright"
