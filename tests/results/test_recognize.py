"""The second stage: PP-OCRv4's text recognizer on the crops of PP-OCRv4's text boxes, both real
models from the demo (rapidocr-onnxruntime 1.4.4), run by the agent's ONNX Runtime engine on real
photos and frames of the demo video. The CTC decode and the crop step are also checked on inputs
whose right answer is known exactly."""

from __future__ import annotations

import ast
import math
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import onnx
import pytest

from agent.dev.demo import DEMO_MODELS, REC_HEIGHT, REC_MIN_WIDTH
from agent.models.graph import SpecMismatchError, check_fits_head, check_fits_input, fuse_preprocessing
from agent.models.manifest import Manifest
from agent.results import CtcDecoder, SecondStage, batch_crops, crop_quad
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.vision.transforms import Detection, Prediction, Preprocessor, TransformError, make_head

DEMO = Path(__file__).resolve().parents[2] / "demo"
MODELS = DEMO / "models"
needs_rec = pytest.mark.skipif(
    not (MODELS / "text-rec-v4" / "dictionary.txt").is_file(), reason="text-rec missing: run `make setup`"
)
ORT_THREADS = 2
PAGE_SCENE_FRAME = 60
"""A frame of the demo video that pans over page.png (the second photo, frames 45-89)."""
PAGE_WORDS = ("Region-based", "segmentation", "markers", "coins", "background")
"""Printed on page.png (scikit-image's page of its segmentation tutorial)."""
PAGE_SCENE_WORDS = ("determine", "markers", "object")
"""Printed on the part of page.png that frame PAGE_SCENE_FRAME shows whole."""


class Detector:
    """The demo's PP-OCRv4 text detector with its manifest's preprocessing and head."""

    def __init__(self, name: str = "text-det-v4") -> None:
        self.manifest = Manifest.read(MODELS / name / "manifest.json")
        self.engine = OnnxRuntimeEngine.load(MODELS / name / "model.onnx", threads=ORT_THREADS)
        self.preprocessor = Preprocessor.for_inputs(self.manifest.preprocess, self.engine.inputs)
        self.head = make_head(self.manifest.head)

    def __call__(self, frame: np.ndarray) -> Prediction:
        tensor, geometry = self.preprocessor.prep(frame)
        return self.head(self.engine.infer({self.preprocessor.input_name: tensor}), geometry)


def recognizer(name: str = "text-rec-v4") -> SecondStage:
    folder = MODELS / name
    manifest = Manifest.read(folder / "manifest.json")
    return SecondStage(OnnxRuntimeEngine.load(folder / manifest.model_file, threads=ORT_THREADS), manifest, folder)


def video_frames(frames: range) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame) of the demo video for each index in ``frames``, read in one pass."""
    capture = cv2.VideoCapture(str(DEMO / "video.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, frames.start)
    try:
        for index in range(frames.start, frames.stop):
            ok, frame = capture.read()
            assert ok, f"frame {index} of the demo video"
            if index in frames:
                yield index, frame
    finally:
        capture.release()


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


@pytest.fixture(scope="module")
def stage() -> SecondStage:
    return recognizer()


# ---------------------------------------------------------------- on the real models


@needs_rec
def test_the_recognizer_reads_the_words_printed_on_the_page_photo(detector: Detector, stage: SecondStage) -> None:
    frame = cv2.imread(str(DEMO / "images" / "page.png"))
    boxes = detector(frame).items
    assert all(isinstance(b, Detection) for b in boxes)
    started = time.perf_counter()
    readings = stage(frame, boxes)
    per_crop_ms = 1000 * (time.perf_counter() - started) / len(readings)
    print(f"text-rec v4: {len(readings)} crops, {per_crop_ms:.1f} ms per crop")
    text = " ".join(r.text for r in readings)
    for word in PAGE_WORDS:
        assert word in text, (word, text)
    assert len(readings) == len(boxes)
    assert all(0.8 <= r.confidence <= 1.0 for r in readings if r.text), readings
    assert [r.polygon for r in readings] == [b.polygon for b in boxes]


@needs_rec
def test_the_recognizer_reads_the_page_as_the_demo_video_pans_over_it(
    detector: Detector, stage: SecondStage
) -> None:
    [(_, frame)] = video_frames(range(PAGE_SCENE_FRAME, PAGE_SCENE_FRAME + 1))
    text = " ".join(r.text for r in stage(frame, detector(frame).items))
    for word in PAGE_SCENE_WORDS:
        assert word in text, (word, text)


@needs_rec
def test_a_recognizer_with_fused_preprocessing_reads_the_same_text_one_crop_at_a_time(
    detector: Detector, stage: SecondStage
) -> None:
    folder = MODELS / "text-rec-v4"
    manifest = Manifest.read(folder / "manifest.json")
    fused = fuse_preprocessing(onnx.load(str(folder / "model.onnx")), manifest.preprocess)
    one_by_one = SecondStage(OnnxRuntimeEngine.load(fused.SerializeToString(), threads=ORT_THREADS), manifest, folder)
    assert one_by_one.engine.inputs[0].dtype == np.uint8
    frame = cv2.imread(str(DEMO / "images" / "page.png"))
    boxes = detector(frame).items
    assert [r.text for r in one_by_one(frame, boxes)] == [r.text for r in stage(frame, boxes)]


@needs_rec
def test_a_frame_without_boxes_reads_nothing_and_infers_nothing(stage: SecondStage) -> None:
    assert stage(np.zeros((48, 64, 3), np.uint8), []) == ()


@needs_rec
def test_a_second_stage_refuses_a_model_that_is_not_a_recognizer() -> None:
    folder = MODELS / "text-det-v4"
    manifest = Manifest.read(folder / "manifest.json")
    engine = OnnxRuntimeEngine.load(folder / "model.onnx", threads=1)
    with pytest.raises(TransformError, match="task recognize with a ctc head"):
        SecondStage(engine, manifest, folder)


@needs_rec
def test_the_recognizer_passes_the_checks_a_deployment_runs_and_is_no_first_stage(stage: SecondStage) -> None:
    manifest = stage.manifest
    assert check_fits_head(stage.engine.outputs, manifest.head).shape == (None, None, len(stage.decoder.classes))
    assert check_fits_input(manifest.preprocess, stage.engine.inputs).name == "x"
    detector = Manifest.read(MODELS / "text-det-v4" / "manifest.json")
    with pytest.raises(SpecMismatchError, match=r"ctc recognizer needs \[N, steps, classes\]"):
        check_fits_head(OnnxRuntimeEngine.load(MODELS / "text-det-v4" / "model.onnx", threads=1).outputs,
                        detector.head.model_copy(update={"kind": "ctc"}))
    with pytest.raises(TransformError, match="reads crops"):
        make_head(manifest.head)


# ---------------------------------------------------------------- decode and crops, exactly


def test_ctc_decode_merges_repeats_drops_blanks_and_keeps_a_letter_repeated_across_a_blank() -> None:
    decoder = CtcDecoder(["a", "b"])  # classes: blank, a, b, space
    steps = [1, 1, 0, 1, 2, 2, 3, 0, 0]  # a a _ a b b ' ' _ _ -> "aab "
    probs = np.full((1, len(steps), 4), 0.1, dtype=np.float32)
    probs[0, np.arange(len(steps)), steps] = [0.9, 0.5, 0.9, 0.7, 0.8, 0.9, 0.6, 0.9, 0.9]
    [(text, confidence)] = decoder.decode(probs)
    assert text == "aab "
    assert confidence == pytest.approx(np.mean([0.9, 0.7, 0.8, 0.6]))


def test_ctc_decode_of_only_blanks_is_empty_text_with_zero_confidence() -> None:
    probs = np.zeros((2, 5, 4), dtype=np.float32)
    probs[:, :, 0] = 1.0
    assert CtcDecoder(["a", "b"]).decode(probs) == [("", 0.0), ("", 0.0)]


def test_ctc_decode_refuses_an_output_that_does_not_fit_the_dictionary() -> None:
    with pytest.raises(TransformError, match=r"\[N, steps, 4\]"):
        CtcDecoder(["a", "b"]).decode(np.zeros((1, 5, 7), dtype=np.float32))


def test_a_rotated_quad_is_cut_out_upright() -> None:
    frame = np.zeros((200, 200, 3), np.uint8)
    centre, size, angle = (100.0, 100.0), (120.0, 30.0), 30.0
    cv2.fillPoly(frame, [cv2.boxPoints((centre, size, angle)).astype(np.int32)], (255, 255, 255))
    quad = cv2.boxPoints((centre, (size[0] - 8, size[1] - 8), angle))
    ordered = quad[np.argsort(np.arctan2(quad[:, 1] - 100, quad[:, 0] - 100))]  # clockwise from top-left
    crop = crop_quad(frame, np.roll(ordered, -int(np.argmin(ordered.sum(axis=1))), axis=0))
    assert crop.shape[:2] == (22, 112)
    assert crop.mean() > 250, "the crop lies inside the white bar"


def test_a_tall_crop_is_turned_to_run_along_x() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    crop = crop_quad(frame, np.array([[10, 10], [30, 10], [30, 90], [10, 90]], dtype=np.float32))
    assert crop.shape[:2] == (20, 80)


def test_crops_of_a_frame_batch_to_the_height_keeping_their_aspect_padded_to_the_widest() -> None:
    spec = next(m.manifest.preprocess for m in DEMO_MODELS if m.manifest.task == "recognize")
    narrow = np.full((24, 48, 3), 255, np.uint8)
    wide = np.full((10, 300, 3), 0, np.uint8)
    batch = batch_crops([narrow, wide], spec)
    assert batch.shape == (2, 3, 48, 48 * 30)
    assert batch.dtype == np.float32
    assert np.allclose(batch[0, :, :, :96], 1.0), "white normalised by (x/255 - 0.5) / 0.5"
    assert np.allclose(batch[0, :, :, 96:], (128 / 255 - 0.5) / 0.5, atol=1e-6), "padded with pad_value"
    assert np.allclose(batch[1], -1.0), "the widest crop fills its row"



# ---------------------------------------------------------------- against rapidocr's own code

RAPIDOCR_WHEEL = DEMO / "wheels" / "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
needs_wheel = pytest.mark.skipif(not RAPIDOCR_WHEEL.is_file(), reason="the rapidocr wheel is missing: make setup")


def rapidocr_rec() -> tuple[Any, Any]:
    """rapidocr 1.4.4's CTCLabelDecode class and TextRecognizer.resize_norm_img, from the wheel's source
    (its package imports yaml, which the agent does not need: only these two pieces are loaded)."""
    with zipfile.ZipFile(RAPIDOCR_WHEEL) as wheel:
        utils = wheel.read("rapidocr_onnxruntime/ch_ppocr_rec/utils.py").decode()
        recognizer_source = wheel.read("rapidocr_onnxruntime/ch_ppocr_rec/text_recognize.py").decode()
    namespace: dict[str, Any] = {}
    exec(compile(utils, "rapidocr/ch_ppocr_rec/utils.py", "exec"), namespace)
    klass = next(n for n in ast.parse(recognizer_source).body if isinstance(n, ast.ClassDef))
    method = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == "resize_norm_img")
    scope: dict[str, Any] = {"np": np, "cv2": cv2, "math": math}
    exec(compile(ast.Module([method], []), "rapidocr/text_recognize.py", "exec"), scope)
    return namespace["CTCLabelDecode"], scope["resize_norm_img"]


@needs_rec
@needs_wheel
def test_the_second_stage_reads_exactly_what_rapidocr_reads_from_the_same_crops_in_one_batch(
    detector: Detector, stage: SecondStage
) -> None:
    decoder_class, resize_norm_img = rapidocr_rec()
    decoder = decoder_class(character=list(stage.decoder.classes[1:-1]))
    frame = cv2.imread(str(DEMO / "images" / "page.png"))
    boxes = detector(frame).items
    crops = [crop_quad(frame, np.asarray(b.polygon, dtype=np.float32)) for b in boxes]
    widest = max([REC_MIN_WIDTH / REC_HEIGHT, *(c.shape[1] / c.shape[0] for c in crops)])
    config = SimpleNamespace(rec_image_shape=[3, REC_HEIGHT, REC_MIN_WIDTH])
    batch = np.stack([resize_norm_img(config, c, widest) for c in crops]).astype(np.float32)
    probs = next(iter(stage.engine.infer({"x": batch}).values()))
    theirs = [(text, score) for text, score in decoder(probs)]
    ours = [(r.text, r.confidence) for r in stage(frame, boxes)]
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    assert [c for _, c in ours] == pytest.approx([c for _, c in theirs], abs=1e-3)
