"""The shadow gate on real model outputs: the demo detectors on the demo video frames.

v4 serves; v6 (a normal update) agrees with it; v4 with an all-zero probability map
(it sees nothing) has box F1 0 wherever v4 sees text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.models.shadow import ShadowDecision, ShadowError, ShadowGate, ShadowSpec, agreement, box_f1
from agent.monitor.features import FrameSummary
from agent.vision.heads import Detection
from agent.vision.summary import summarize
from tests.support.artifacts import variant_folder, zero_model
from tests.support.monitor_support import DEMO, SCENE_FRAMES, TEXT_DET, model_results

V6 = DEMO / "models" / "text-det-v6"
FRAMES = range(1, 6 * SCENE_FRAMES, 9)
"""Every 9th frame of a loop of the demo video (30 frames, all six scenes)."""
PAGE = range(SCENE_FRAMES, 2 * SCENE_FRAMES, 5)
"""The page scene, where both detectors find about six boxes a frame."""


@pytest.fixture(scope="module")
def zero_det(tmp_path_factory) -> Path:
    return variant_folder(TEXT_DET, tmp_path_factory.mktemp("zero") / "text-det-zero", "zero", zero_model)


def _summaries(model: Path, frames: range, version: str) -> list[FrameSummary]:
    return [summarize(r) for r in model_results(model, "original", frames, version=version)]


def _run(gate: ShadowGate, serving: list[FrameSummary], candidate: list[FrameSummary]) -> None:
    for s, c in zip(serving, candidate, strict=True):
        gate.compare(s, c, serving_ms=10.0, candidate_ms=15.0)


def test_box_f1_matches_boxes_of_one_label_at_iou_one_half():
    a = Detection((0, 0, 10, 10), 0.9, "text")
    shifted = Detection((2, 0, 12, 10), 0.8, "text")  # IoU 80/120 = 0.67
    far = Detection((5, 0, 15, 10), 0.8, "text")  # IoU 50/150 = 0.33
    assert box_f1([a], [shifted]) == 1.0
    assert box_f1([a], [far]) == 0.0
    assert box_f1([a], [Detection((2, 0, 12, 10), 0.8, "sign")]) == 0.0
    assert box_f1([a, far], [shifted]) == pytest.approx(2 / 3)
    assert box_f1([], []) == 1.0
    assert box_f1([a], []) == 0.0


def test_v6_agrees_with_v4_and_is_promoted():
    serving = _summaries(TEXT_DET, PAGE, "v4")
    candidate = _summaries(V6, PAGE, "v6")
    gate = ShadowGate()
    gate.start("v6", ShadowSpec(min_agreement=0.6, min_frames=len(PAGE), every_nth=1))
    _run(gate, serving, candidate)
    report = gate.report()
    assert report["frames"] == len(PAGE) and report["agreement"] >= 0.6, report
    camera = report["cameras"]["camera0"]
    assert camera["latency_ratio"] == 1.5 and abs(camera["detections_difference"]) < 2
    assert gate.decide() == (ShadowDecision.PROMOTE, "")
    assert gate.finish()["candidate"] == "v6" and not gate.running


def test_a_model_that_sees_nothing_has_box_f1_zero_where_v4_sees_text_and_is_discarded(zero_det):
    serving = _summaries(TEXT_DET, PAGE, "v4")
    candidate = _summaries(zero_det, PAGE, "zero")
    assert all(agreement(s, c) == 0.0 for s, c in zip(serving, candidate, strict=True))
    gate = ShadowGate()
    gate.start("zero", ShadowSpec(min_agreement=0.5, min_frames=len(PAGE), every_nth=1))
    _run(gate, serving, candidate)
    decision, reason = gate.decide()
    assert decision is ShadowDecision.DISCARD
    assert "agreement 0.000" in reason and "bound 0.5" in reason


def test_too_few_frames_is_pending_then_discarded_when_the_run_ends():
    serving = _summaries(TEXT_DET, FRAMES, "v4")
    gate = ShadowGate()
    gate.start("v4", ShadowSpec(min_agreement=0.5, min_frames=len(FRAMES) + 1, every_nth=1))
    _run(gate, serving, serving)
    assert gate.decide() == (ShadowDecision.PENDING, "")
    decision, reason = gate.decide(ended=True)
    assert decision is ShadowDecision.DISCARD and "frames compared" in reason


def test_a_manual_promote_waits_for_the_bound_then_ends_the_run():
    serving = _summaries(TEXT_DET, PAGE, "v4")
    gate = ShadowGate()
    gate.start("v4b", ShadowSpec(min_agreement=0.9, min_frames=len(PAGE), every_nth=3, auto_promote=False))
    assert [gate.wants(i) for i in range(4)] == [True, False, False, True]
    with pytest.raises(ShadowError) as early:
        gate.promote()
    assert early.value.code == "not_ready"
    _run(gate, serving, serving)
    assert gate.decide()[0] is ShadowDecision.READY
    assert gate.promote()["agreement"] == 1.0
    assert not gate.running


def test_bad_requests_are_coded_errors_and_change_nothing():
    gate = ShadowGate()
    with pytest.raises(ShadowError) as none:
        gate.promote()
    assert none.value.code == "no_shadow"
    for bad in ({"min_agreement": 1.5}, {"min_agreement": -0.1}, {"every_nth": 0}):
        with pytest.raises(ShadowError) as invalid:
            ShadowSpec(**{"min_agreement": 0.9, "min_frames": 10, "every_nth": 1, **bad})
        assert invalid.value.code == "invalid_shadow"
    gate.start("v6", ShadowSpec(0.9, 10, 1))
    with pytest.raises(ShadowError) as busy:
        gate.start("v7", ShadowSpec(0.9, 10, 1))
    assert busy.value.code == "busy" and gate.candidate == "v6"
