"""Text agreement in shadow, on the real demo models: PP-OCRv4's detector serving, v6 the candidate, and
PP-OCRv4's recognizer as the page camera's second stage, through the agent's shadow observer.

The serving recognizer reads the boxes both detectors agree on, as each placed them; a recognizer
candidate is compared with the serving one on the same crops. v6 reads like v4 (character agreement
0.96 on the page scene, though only 4 in 10 boxes exactly alike: one letter at a box's edge); a
recognizer whose dictionary is shuffled (a mislabelled class map: it runs clean and reads garbage)
agrees near 0 and is discarded on the text bound.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import Manifest
from agent.models.shadow import (
    ShadowDecision,
    ShadowError,
    ShadowGate,
    ShadowSpec,
    character_agreement,
    text_agreement,
)
from agent.models.store import ModelStore
from agent.results import Reading, SecondStage
from agent.results.stages import SecondStages, second_stage_options
from agent.runtime.onnxrt import OnnxRuntimeEngine
from agent.vision.heads import Detection
from agent.vision.shadow import ShadowRunner, shadow_session_options
from tests.results.test_recognize import MODELS, needs_rec, recognizer
from tests.support.monitor_support import SCENE_FRAMES, TEXT_DET, model_results
from tests.support.rec_bundles import shuffle_dictionary

pytestmark = needs_rec
PAGE = range(SCENE_FRAMES + 2, 2 * SCENE_FRAMES, 10)
"""Five frames of the page scene, where both detectors find about six text lines."""
TEXT_BOUND = 0.8
"""[deploy] shadow_min_text_agreement's default."""
OPTIONS = EngineOptions(threads=2)


def test_character_agreement_is_one_minus_the_normalised_edit_distance():
    assert character_agreement("markers", "markers") == 1.0
    assert character_agreement("", "") == 1.0
    assert character_agreement("markers", "") == 0.0
    assert character_agreement("markers", "marker") == pytest.approx(1 - 1 / 7)
    assert character_agreement("grey values:", "greyvalues:") == pytest.approx(1 - 1 / 12)
    assert character_agreement("abc", "xyz") == 0.0
    texts = text_agreement(["markers", "grey values:", "coins"], ["markers", "greyvalues:", "coin"])
    assert texts.pairs == 3 and texts.exact == pytest.approx(1 / 3)
    assert texts.character == pytest.approx((1 + (1 - 1 / 12) + (1 - 1 / 5)) / 3)
    assert text_agreement([], []).pairs == 0
    reading = Reading("coins", 0.9, ((0, 0), (1, 0), (1, 1), (0, 1)))
    assert text_agreement([reading], ["coins"]).exact == 1.0, "readings or their texts"
    with pytest.raises(ShadowError) as unequal:
        text_agreement(["a", "b"], ["a"])
    assert unequal.value.code == "invalid_readings"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("store") / "engines")
    for name in ("text-det-v4", "text-det-v6", "text-rec-v4"):
        store.install(MODELS / name)
    return store


@pytest.fixture(scope="module")
def stages(store) -> SecondStages:
    stages = SecondStages()
    stages.load(store, ["text-rec"], second_stage_options(OPTIONS))
    yield stages
    stages.close()


def _read_page(stages: SecondStages):
    def read(camera, image, detections):
        if camera != "page":
            return None  # a camera without a second stage
        read = stages.read("text-rec", camera, image, detections, counted=False)
        return None if read is None else read.readings
    return read


def test_v6_in_shadow_reads_like_v4_through_the_shadow_observer(store, stages):
    candidate = load_serving(store.get("text-det", "v6"), OPTIONS)
    gate = ShadowGate()
    gate.start("v6", ShadowSpec(min_agreement=0.9, min_frames=len(PAGE), every_nth=1,
                                min_text_agreement=TEXT_BOUND), serving=candidate)
    runner = ShadowRunner(gate, lambda job: job(), None, read=_read_page(stages))
    before = stages.health()
    try:
        for result in model_results(TEXT_DET, "original", PAGE, source="page"):
            runner(result)
        for result in model_results(TEXT_DET, "original", PAGE[:2], source="lobby"):
            runner(result)
    finally:
        candidate.engine.close()
    assert runner.failures.count == 0
    report = gate.report()
    page = report["cameras"]["page"]["text"]
    assert page["frames"] == len(PAGE) and page["pairs"] >= 4 * len(PAGE), page
    assert page["character"] >= 0.9 and page["exact"] < page["character"], page
    assert report["cameras"]["lobby"]["text"] is None, "no second stage: no text compared"
    assert report["text"]["pairs"] == page["pairs"]
    assert stages.health()["frames"] == before["frames"], "a shadow read is not a results read"
    assert gate.decide() == (ShadowDecision.PROMOTE, "")


def _shuffled_recognizer(tmp: Path) -> Path:
    """text-rec-v4 whose dictionary lines are shuffled: the same network, a mislabelled class map."""
    folder = tmp / "text-rec-shuffled"
    shutil.copytree(MODELS / "text-rec-v4", folder)
    shuffle_dictionary(folder)
    return folder


def test_a_recognizer_with_a_shuffled_dictionary_is_discarded_on_the_text_bound(tmp_path):
    serving, shuffled = recognizer(), recognizer_at(_shuffled_recognizer(tmp_path))
    gate = ShadowGate()
    gate.start("shuffled", ShadowSpec(min_agreement=0.9, min_frames=len(PAGE), every_nth=1,
                                      min_text_agreement=TEXT_BOUND))
    same = ShadowGate()
    same.start("v4", ShadowSpec(min_agreement=0.9, min_frames=len(PAGE), every_nth=1,
                                min_text_agreement=TEXT_BOUND))
    for result in model_results(TEXT_DET, "original", PAGE, source="page"):
        assert result.prediction is not None
        boxes = [d for d in result.prediction.items if isinstance(d, Detection)]
        read = serving(result.frame.image, boxes)
        gate.compare_texts("page", read, shuffled(result.frame.image, boxes))
        same.compare_texts("page", read, serving(result.frame.image, boxes))
    assert same.report()["text"]["exact"] == 1.0 and same.decide() == (ShadowDecision.PROMOTE, "")
    text = gate.report()["text"]
    assert text["frames"] == len(PAGE) and text["character"] < 0.2, text
    decision, reason = gate.decide()
    assert decision is ShadowDecision.DISCARD
    assert "text agreement" in reason and f"bound {TEXT_BOUND}" in reason, reason


def recognizer_at(folder: Path) -> SecondStage:
    manifest = Manifest.read(folder / "manifest.json")
    return SecondStage(OnnxRuntimeEngine.load(folder / manifest.model_file, threads=2), manifest, folder)


def test_a_text_bound_outside_zero_one_is_refused():
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ShadowError) as invalid:
            ShadowSpec(min_agreement=0.9, min_frames=1, every_nth=1, min_text_agreement=bad)
        assert invalid.value.code == "invalid_shadow"


def test_a_capped_shadow_session_compares_like_the_candidate_and_closes_when_the_run_ends(store):
    candidate = load_serving(store.get("text-det", "v6"), OPTIONS)
    frames = model_results(TEXT_DET, "original", PAGE[:3], source="page")
    reports = []
    try:
        for capped in (None, shadow_session_options(OPTIONS, 1)):
            gate = ShadowGate()
            gate.start("v6", ShadowSpec(min_agreement=0.9, min_frames=3, every_nth=1), serving=candidate)
            jobs = []
            runner = ShadowRunner(gate, jobs.append, None, capped=capped)
            for result in frames:
                runner(result)
                jobs.pop()()
            assert runner.failures.count == 0
            reports.append(gate.report())
            gate.finish()
            runner(frames[0])  # the next frame after the run: the capped session's close is queued
            if capped is None:
                assert jobs == [], "no session of its own: nothing to close"
            else:
                assert len(jobs) == 1
                jobs.pop()()
            assert not candidate.closed, "the candidate's own engine is never closed by the runner"
        plain, capped_report = (r["cameras"]["page"] for r in reports)
        assert capped_report["frames"] == plain["frames"] == 3
        # Its preprocessing runs in numpy, not in the graph: the same boxes up to a pixel's rounding.
        assert capped_report["agreement"] == pytest.approx(plain["agreement"], abs=0.05)
        assert capped_report["detections_per_frame"] == pytest.approx(plain["detections_per_frame"], abs=0.5)
    finally:
        candidate.engine.close()
