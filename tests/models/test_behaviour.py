"""Behavioural probation's judgement on real model outputs: the demo detectors on the demo video.

v4 is the old model; v6 (a normal update) must pass the default bounds; v4 with its
probability map multiplied by zero (as fast and as finite as v4, sees nothing) must fail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.core.config import DeploySection
from agent.models.behaviour import BehaviourBounds, BehaviourProbe, OutputRow, OutputWindow, judge_behaviour, rows_of
from agent.monitor.reference import Reference, ReferenceBuilder
from agent.vision.summary import summarize
from tests.support.artifacts import variant_folder, zero_model
from tests.support.monitor_support import DEMO, SCENE_FRAMES, TEXT_DET, model_results

V6 = DEMO / "models" / "text-det-v6"
LOOP = 6 * SCENE_FRAMES
"""Frames in one loop of the demo video."""
OLD_FRAMES = range(0, LOOP, 3)
"""The old model's baseline: every 3rd frame of a whole loop (90)."""
NEW_FRAMES = range(1, LOOP, 9)
"""The new model's probation frames: every 9th frame of a loop (30, the default minimum)."""
DEFAULTS = BehaviourBounds.from_settings(DeploySection())


@pytest.fixture(scope="module")
def zero_det(tmp_path_factory) -> Path:
    return variant_folder(TEXT_DET, tmp_path_factory.mktemp("zero") / "text-det-zero", "zero", zero_model)


def _rows(model: Path, frames: range, version: str, camera: str = "camera0") -> list[OutputRow]:
    return rows_of(summarize(r) for r in model_results(model, "original", frames, version=version, source=camera))


def _reference(model: Path, frames: range) -> Reference:
    builder = ReferenceBuilder("text_detect", ("text",))
    for result in model_results(model, "original", frames):
        builder.observe(summarize(result))
    return builder.build("text-det", "ref", "0" * 64, "demo video")


@pytest.fixture(scope="module")
def old() -> list[OutputRow]:
    return _rows(TEXT_DET, OLD_FRAMES, "v4")


def test_v4_to_v6_passes_the_default_bounds_against_the_old_model_and_both_references(old):
    new = _rows(V6, NEW_FRAMES, "v6")
    for reference in (_reference(V6, range(4, LOOP, 9)), _reference(TEXT_DET, OLD_FRAMES)):
        verdict = judge_behaviour(DEFAULTS, new, old, reference)
        assert verdict.ok and verdict.final, verdict
        camera = verdict.detail["cameras"]["camera0"]
        assert 0.5 < camera["count_ratio"] < 2.0
        assert camera["score_js"] < DEFAULTS.max_score_js
        assert set(verdict.detail["reference"]) == {"count", "confidence"}


def test_a_model_that_detects_nothing_fails_on_detections_per_frame_naming_the_bound(old, zero_det):
    verdict = judge_behaviour(DEFAULTS, _rows(zero_det, NEW_FRAMES, "zero"), old, None)
    assert not verdict.ok and verdict.final
    assert "detections per frame 0.00" in verdict.reason
    assert f"bound >= {DEFAULTS.min_count_ratio}" in verdict.reason
    assert verdict.detail["cameras"]["camera0"]["count_ratio"] == 0.0


def test_with_no_old_model_to_compare_a_model_that_detects_nothing_fails_on_its_reference(zero_det):
    verdict = judge_behaviour(DEFAULTS, _rows(zero_det, NEW_FRAMES, "zero"), [], _reference(TEXT_DET, OLD_FRAMES))
    assert not verdict.ok and verdict.final
    assert "against the bundle's reference" in verdict.reason
    assert f"(bound {DEFAULTS.max_reference_psi})" in verdict.reason or \
        f"(bound {DEFAULTS.max_reference_js})" in verdict.reason


def test_a_model_that_detects_everything_fails_on_the_upper_ratio(old):
    real = _rows(TEXT_DET, NEW_FRAMES, "v6")
    flooded = [r._replace(detections=r.detections * 20 + 20) for r in real]
    verdict = judge_behaviour(DEFAULTS, flooded, old, None)
    assert not verdict.ok
    assert f"bound <= {DEFAULTS.max_count_ratio}" in verdict.reason


def test_a_scene_where_the_old_model_saw_nothing_does_not_fail_a_model_that_sees_nothing(zero_det):
    rocket = range(5 * SCENE_FRAMES, LOOP)  # the old model detects no text in the last scene
    verdict = judge_behaviour(DEFAULTS, _rows(zero_det, rocket, "zero"), _rows(TEXT_DET, rocket, "v4"), None)
    assert verdict.ok and verdict.final, verdict


def test_too_few_frames_is_not_final_and_a_camera_without_a_baseline_is_not_compared(old, zero_det):
    few = _rows(zero_det, NEW_FRAMES, "zero")[: DEFAULTS.min_frames - 1]
    verdict = judge_behaviour(DEFAULTS, few, old, None)
    assert verdict.ok and not verdict.final
    elsewhere = _rows(zero_det, NEW_FRAMES, "zero", camera="camera1")
    verdict = judge_behaviour(DEFAULTS, elsewhere, old, None)
    assert verdict.ok and not verdict.final
    assert verdict.detail["cameras"]["camera1"]["state"] == "insufficient_frames"


def test_a_changed_label_mix_fails_on_the_label_distance(old):
    relabelled = [r._replace(labels=tuple("sign" for _ in r.labels)) for r in _rows(TEXT_DET, NEW_FRAMES, "v6")]
    verdict = judge_behaviour(DEFAULTS, relabelled, old, None)
    assert not verdict.ok
    assert "label mix JS distance" in verdict.reason


def test_a_probe_reads_the_old_model_before_the_swap_and_the_new_one_after_it(old, zero_det):
    window = OutputWindow(1000)
    for result in model_results(TEXT_DET, "original", OLD_FRAMES, version="v4"):
        window.observe(summarize(result))
    probe = BehaviourProbe(window, DEFAULTS, "zero", "v4", None)
    assert len(probe.baseline) == len(OLD_FRAMES)
    assert probe.judge().final is False
    for result in model_results(zero_det, "original", NEW_FRAMES, version="zero"):
        window.observe(summarize(result))
    for result in model_results(TEXT_DET, "original", NEW_FRAMES, version="v4"):  # old frames still in flight
        window.observe(summarize(result))
    verdict = probe.judge()
    assert not verdict.ok and "detections per frame" in verdict.reason
    assert verdict.detail["cameras"]["camera0"]["frames"] == len(NEW_FRAMES)


def test_bounds_take_a_deploys_own_values_over_the_config_and_refuse_bad_ones():
    section = DeploySection()
    assert BehaviourBounds.from_settings(section, min_count_ratio=0.3, max_score_js=None).min_count_ratio == 0.3
    assert BehaviourBounds.from_settings(section).max_score_js == section.behaviour_max_score_js
    with pytest.raises(ValueError, match="must be below"):
        BehaviourBounds.from_settings(section, min_count_ratio=20.0)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        replace(DEFAULTS, max_label_js=1.5)
    with pytest.raises(ValueError, match="baseline_frames"):
        replace(DEFAULTS, baseline_frames=DEFAULTS.min_frames - 1)
