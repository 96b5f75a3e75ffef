"""The running agent's second stages on the real demo models: the recognizer loaded from a store into
a slot of its own, read under a lease on the detector's boxes of the page photo, swapped between two
reads (the old engine closed once its lease ends), and the failures it must survive."""

from __future__ import annotations

import shutil

import cv2
import pytest

from agent.core import ResultsSettings
from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import Manifest
from agent.models.store import ModelStore
from agent.monitor.telemetry import Telemetry
from agent.results.publisher import ResultsPublisher
from agent.results.stages import SecondStages, second_stage_options
from agent.vision.transforms import Detection, TransformError
from agent.wire import Topics
from tests.results.test_recognize import DEMO, MODELS, PAGE_WORDS, Detector, needs_rec

pytestmark = needs_rec
OPTIONS = second_stage_options(EngineOptions(threads=2))


@pytest.fixture(scope="module")
def page() -> tuple[object, tuple[Detection, ...]]:
    frame = cv2.imread(str(DEMO / "images" / "page.png"))
    boxes = tuple(d for d in Detector()(frame).items if isinstance(d, Detection))
    assert len(boxes) >= 5
    return frame, boxes


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "engines")
    store.install(MODELS / "text-det-v4")
    store.install(MODELS / "text-rec-v4")
    return store


def test_the_named_recognizer_reads_the_page_words_from_its_own_slot(store, page):
    stages = SecondStages()
    stages.load(store, ["text-rec", "text-rec"], OPTIONS)
    frame, boxes = page
    read = stages.read("text-rec", "front", frame, boxes)
    assert read is not None and read.model.name == "text-rec" and read.model.version == "v4"
    text = " ".join(r.text for r in read.readings)
    assert len(read.readings) == len(boxes)
    for word in PAGE_WORDS:
        assert word in text, text
    assert stages.health() == {"frames": 1, "crops": len(boxes), "failures": 0}
    assert stages.read("text-rec", "front", frame, ()) is None, "no box: nothing to read"
    stages.close()


def test_a_swap_falls_between_two_reads_and_the_old_engine_closes(store, page):
    stages = SecondStages()
    stages.load(store, ["text-rec"], OPTIONS)
    frame, boxes = page
    first = stages.read("text-rec", "front", frame, boxes)
    again = load_serving(store.current("text-rec"), OPTIONS)
    old = stages.swap(again)
    assert old is not None and old is not again and old.closed
    second = stages.read("text-rec", "front", frame, boxes)
    assert first is not None and second is not None
    assert [r.text for r in second.readings] == [r.text for r in first.readings]
    stages.close()
    assert again.closed


def test_a_model_missing_or_no_recognizer_is_skipped_and_a_failing_read_is_counted(store, page):
    stages = SecondStages()
    stages.load(store, ["text-nope", "text-det"], OPTIONS)
    assert stages.slots == {} and stages.serving("text-nope") is None
    frame, boxes = page
    assert stages.read("text-nope", "front", frame, boxes) is None
    with pytest.raises(TransformError):
        stages.swap(load_serving(store.current("text-det"), OPTIONS))
    stages.load(store, ["text-rec"], OPTIONS)
    assert stages.read("text-rec", "front", frame[:0], boxes) is None, "an empty frame fails: counted"
    assert stages.failures.count == 1
    stages.close()


def test_a_shadow_read_beside_the_results_uses_the_cameras_second_stage_and_is_not_counted(store, page):
    stages = SecondStages()
    stages.load(store, ["text-rec"], OPTIONS)
    cameras = {"front": ResultsSettings(second_stage="text-rec"), "side": ResultsSettings()}
    publisher = ResultsPublisher(Telemetry(Topics("edge", "dev1"), "dev1", "test"), Topics("edge", "dev1"),
                                 cameras.get, store.root, second_stages=stages)
    frame, boxes = page
    readings = publisher.read_beside("front", frame, boxes)
    assert readings is not None and len(readings) == len(boxes)
    assert "markers" in " ".join(r.text for r in readings)
    assert publisher.read_beside("side", frame, boxes) is None, "a camera without a second stage"
    assert publisher.read_beside("gone", frame, boxes) is None, "a camera that is gone"
    assert stages.health()["frames"] == 0, "a shadow read is not a results read"
    stages.close()


def test_a_current_version_that_does_not_load_falls_back_to_the_previous(store, page, tmp_path):
    junk = tmp_path / "text-rec-v5"
    shutil.copytree(MODELS / "text-rec-v4", junk)
    (junk / "model.onnx").write_bytes(b"\x00not onnx" * 64)
    manifest = Manifest.read(junk / "manifest.json")
    manifest.model_copy(update={"version": "v5", "files": {}}).with_hashes(junk).write(junk / "manifest.json")
    store.install(junk)
    assert store.current_version("text-rec") == "v5"
    stages = SecondStages()
    stages.load(store, ["text-rec"], OPTIONS)
    frame, boxes = page
    read = stages.read("text-rec", "front", frame, boxes)
    stages.close()
    assert read is not None and read.model.version == "v4"
