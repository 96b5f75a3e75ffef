"""Behavioural probation's judgement on real model outputs: the demo detectors on the demo video.

v4 is the old model; v6 (a normal update) must pass the default bounds; v4 with its
probability map multiplied by zero (as fast and as finite as v4, sees nothing) must fail,
also when the deploy comes as the video changes scene (the new model's first frames are of
other photos than the old model's baseline).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.core.config import DeploySection
from agent.models.behaviour import (
    INPUT_MOVED,
    BehaviourBounds,
    BehaviourProbe,
    BehaviourVerdict,
    OutputRow,
    OutputWindow,
    judge_behaviour,
    rows_of,
)
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
STEP = 3
"""A test agent infers 5 frames a second of the 15 the demo video gives: every 3rd frame."""
SCENE_CHANGE = SCENE_FRAMES
"""The frame where the video turns from its first photo (a sign) to the second (a page)."""
BEFORE_SWAP = 60
"""v4 frames before the swap (12 s at 5 fps): the last three photos of the loop before, and the first photo."""
AFTER_SWAP = 2 * LOOP // STEP
"""The most frames a deploy at the scene change is watched for in these tests: two loops of the video."""


@pytest.fixture(scope="module")
def zero_det(tmp_path_factory) -> Path:
    return variant_folder(TEXT_DET, tmp_path_factory.mktemp("zero") / "text-det-zero", "zero", zero_model)


def _rows(model: Path, frames: range | list[int], version: str, camera: str = "camera0") -> list[OutputRow]:
    return rows_of(summarize(r) for r in model_results(model, "original", frames, version=version, source=camera))


def _at_5_fps(start: int, count: int) -> list[int]:
    """``count`` frames a 5 fps agent infers from video frame ``start`` on (a negative start: the loop before)."""
    return [(start + STEP * k) % LOOP for k in range(count)]


def _deployed_at_the_scene_change(new_model: Path, version: str) -> tuple[BehaviourVerdict, list[BehaviourVerdict]]:
    """v4 serves BEFORE_SWAP frames up to SCENE_CHANGE, then ``new_model`` from there on, judged after every
    frame as probation polls it: the verdict that ends it (a failure, or the first final one) and those before."""
    window = OutputWindow(1000)
    for result in model_results(TEXT_DET, "original", _at_5_fps(SCENE_CHANGE - STEP * BEFORE_SWAP, BEFORE_SWAP)):
        window.observe(summarize(result))
    probe = BehaviourProbe(window, DEFAULTS, version, "v4", None)
    seen = []
    for result in model_results(new_model, "original", _at_5_fps(SCENE_CHANGE, AFTER_SWAP), version=version):
        window.observe(summarize(result))
        verdict = probe.judge()
        if not verdict.ok or verdict.final:
            return verdict, seen
        seen.append(verdict)
    raise AssertionError(f"undecided after {AFTER_SWAP} frames: {seen[-1]}")


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


def test_v4_to_v6_deployed_as_the_scene_changes_waits_for_the_old_models_scenes_and_is_kept():
    first = _rows(V6, _at_5_fps(SCENE_CHANGE, DEFAULTS.min_frames), "v6")
    baseline = _rows(TEXT_DET, _at_5_fps(SCENE_CHANGE - STEP * BEFORE_SWAP, BEFORE_SWAP), "v4")
    early = judge_behaviour(DEFAULTS, first, baseline, None)  # the page and the astronaut against the other four
    assert early.ok and not early.final, early  # compared as they were, the score JS distance was 0.69 (bound 0.6)
    assert early.detail["cameras"]["camera0"]["state"] == INPUT_MOVED
    with capture_logs() as logs:
        verdict, before = _deployed_at_the_scene_change(V6, "v6")
    assert verdict.ok and verdict.final, verdict
    camera = verdict.detail["cameras"]["camera0"]
    assert camera["score_js"] < DEFAULTS.max_score_js and 0.5 < camera["count_ratio"] < 2.0, camera
    assert camera["frames"] >= DEFAULTS.min_frames and camera["unmatched_frames"] > 0, camera
    assert any(v.detail["cameras"]["camera0"].get("state") == INPUT_MOVED for v in before)
    moved = [entry for entry in logs if entry["event"] == "behaviour_input_moved"]
    assert len(moved) == 1 and moved[0]["camera"] == "camera0", logs


def test_a_model_that_detects_nothing_deployed_as_the_scene_changes_still_fails(zero_det):
    verdict, before = _deployed_at_the_scene_change(zero_det, "zero")
    assert not verdict.ok and verdict.final
    assert "detections per frame 0.00" in verdict.reason and f"bound >= {DEFAULTS.min_count_ratio}" in verdict.reason
    assert before and before[-1].detail["cameras"]["camera0"]["state"] == INPUT_MOVED


def test_while_a_camera_waits_for_the_old_models_scenes_a_blind_model_fails_on_its_reference(zero_det):
    first = _rows(zero_det, _at_5_fps(SCENE_CHANGE, DEFAULTS.min_frames), "zero")
    baseline = _rows(TEXT_DET, _at_5_fps(SCENE_CHANGE - STEP * BEFORE_SWAP, BEFORE_SWAP), "v4")
    unjudged = judge_behaviour(DEFAULTS, first, baseline, None)
    assert unjudged.ok and unjudged.detail["cameras"]["camera0"]["state"] == INPUT_MOVED
    verdict = judge_behaviour(DEFAULTS, first, baseline, _reference(TEXT_DET, OLD_FRAMES))
    assert not verdict.ok and verdict.final
    assert "against the bundle's reference" in verdict.reason, verdict.reason
    assert verdict.detail["cameras"]["camera0"]["state"] == INPUT_MOVED


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
    with pytest.raises(ValueError, match="ratio > 1"):
        replace(DEFAULTS, match_sharpness=1.0)
    with pytest.raises(ValueError, match="match_contrast must be > 0"):
        replace(DEFAULTS, match_contrast=0.0)
