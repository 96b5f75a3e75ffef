"""Drift on the real demo models and the real demo video."""

import json

import pytest

from agent.core.config import DriftSection, MonitorSection
from agent.monitor.drift import DriftMonitor
from agent.monitor.reference import Reference, ReferenceBuilder, ReferenceDataError
from agent.vision.summary import observe, summarize
from agent.wire.signals import DriftPayload
from tests.support.monitor_support import (
    ORIENTATION,
    ORIENTATION_LABELS,
    SCENE_FRAMES,
    TEXT_DET,
    cached_predictor,
    frames,
    model_results,
    result_of,
    results,
    video,
)

EVEN = range(0, 270, 2)
ODD = range(1, 270, 2)
TEXT_SCENES = range(0, 2 * SCENE_FRAMES, 2)
"""The text and page photos."""
PHOTO_SCENES = range(2 * SCENE_FRAMES, 4 * SCENE_FRAMES, 2)
"""The astronaut and coffee photos."""
SNAPSHOT_EVERY = 15
"""Frames between two evaluations: one second of the 15 fps video, as the telemetry timer would."""
ENVELOPE = {"device_id": "dev1", "ts": 1.0, "seq": 1}


def reference_of(model, indices) -> Reference:
    task = cached_predictor(model).task
    builder = ReferenceBuilder(task, ORIENTATION_LABELS if task == "classify" else ("text",))
    for result in model_results(model, "original", indices):
        builder.observe(summarize(result))
    return builder.build(model.name, "v4", "a" * 64, "video.mp4")


@pytest.fixture(scope="module")
def text_reference() -> Reference:
    return reference_of(TEXT_DET, EVEN)


def drift_monitor(reference, window: int, *, min_samples: int | None = None, sample_every: int = 1,
                  version: str | None = None) -> DriftMonitor:
    """A monitor over ``window`` frames that judges once the window is full (or holds ``min_samples``)."""
    section = DriftSection(drift_window=window, drift_sample_every=sample_every,
                           drift_min_samples=window if min_samples is None else min_samples)
    return DriftMonitor(section, reference, version)


def replay(monitor: DriftMonitor, frame_results) -> list[dict]:
    """Feed the frames; evaluate every SNAPSHOT_EVERY frames once the window is full."""
    snapshots = []
    for n, result in enumerate(frame_results, start=1):
        observe(monitor, result)
        if n >= monitor.window and n % SNAPSHOT_EVERY == 0:
            snapshots.append(monitor.snapshot())
    snapshots.append(monitor.snapshot())
    return snapshots


def states(snapshot: dict) -> dict[str, str]:
    return {name: metric["state"] for name, metric in snapshot["metrics"].items()}


def test_the_profiled_reference_of_the_text_detector_describes_the_video(text_reference):
    ref = text_reference
    assert ref.task == "text_detect" and ref.samples == len(EVEN)
    inputs = ref.inputs
    for dist in (inputs.brightness, inputs.contrast, inputs.sharpness, ref.outputs.count):
        assert sum(dist.counts) == len(EVEN)
        assert list(dist.edges) == sorted(dist.edges)
    predict = cached_predictor(TEXT_DET)
    detections = sum(predict(f).count for f in frames("original", tuple(EVEN)))
    assert sum(ref.outputs.confidence.counts) == detections > 0
    assert ref.outputs.classes is None
    brightness = [summarize(r).inputs.brightness for r in model_results(TEXT_DET, "original", EVEN)]
    assert ref.inputs.brightness.mean == pytest.approx(sum(brightness) / len(brightness))
    stored = json.loads(json.dumps(ref.model_dump(mode="json")))
    assert Reference.parse(stored) == ref


@pytest.mark.parametrize("model", [TEXT_DET, ORIENTATION], ids=["text-det", "orientation"])
def test_a_stationary_replay_of_the_video_against_its_own_reference_raises_no_alarm(model):
    reference = reference_of(model, EVEN)
    monitor = drift_monitor(reference, window=len(ODD))
    twice = model_results(model, "original", ODD) + model_results(model, "original", ODD,
                                                                  start=len(ODD))
    snapshots = replay(monitor, twice)
    assert len(snapshots) > 5
    for snapshot in snapshots:
        judged = states(snapshot)
        assert "alarm" not in judged.values(), snapshot["metrics"]
        assert {judged[m] for m in ("brightness", "contrast", "sharpness")} == {"ok"}
    assert [e for e in monitor.take_events() if e.state == "alarm"] == []


def test_a_darkened_video_raises_an_input_drift_alarm_on_brightness(text_reference):
    monitor = drift_monitor(text_reference, window=len(EVEN))
    snapshot = replay(monitor, model_results(TEXT_DET, "dark", EVEN))[-1]
    brightness = snapshot["metrics"]["brightness"]
    assert brightness["state"] == "alarm"
    assert brightness["mean"] < 0.5 * brightness["reference_mean"]
    events = {e.metric: e for e in monitor.take_events()}
    event = events["brightness"]
    assert (event.signal, event.state, event.kind) == ("drift", "alarm", "alarm_raised")
    assert event.value > event.threshold == DriftSection().drift_psi_alarm


def test_a_blurred_video_raises_a_sharpness_alarm_and_leaves_brightness_alone(text_reference):
    blurred = range(0, 270, 6)
    monitor = drift_monitor(text_reference, window=len(blurred))
    snapshot = replay(monitor, model_results(TEXT_DET, "blurred", blurred))[-1]
    assert snapshot["metrics"]["sharpness"]["state"] == "alarm"
    assert snapshot["metrics"]["brightness"]["state"] == "ok"
    assert "sharpness" in {e.metric for e in monitor.take_events()}


def test_a_scene_change_raises_output_drift_on_the_detection_counts():
    monitor = drift_monitor(reference_of(TEXT_DET, TEXT_SCENES), window=len(PHOTO_SCENES))
    snapshot = replay(monitor, model_results(TEXT_DET, "original", PHOTO_SCENES))[-1]
    count = snapshot["metrics"]["count"]
    assert count["state"] == "alarm" and count["mean"] < count["reference_mean"]
    assert "count" in {e.metric for e in monitor.take_events()}


def test_a_scene_change_raises_output_drift_on_the_classes_of_a_classifier():
    monitor = drift_monitor(reference_of(ORIENTATION, TEXT_SCENES), window=len(PHOTO_SCENES))
    snapshot = replay(monitor, model_results(ORIENTATION, "original", PHOTO_SCENES))[-1]
    expected = {"brightness", "contrast", "sharpness", "classes", "confidence"}
    assert set(snapshot["metrics"]) == expected
    assert snapshot["metrics"]["classes"]["state"] == "alarm"


def test_without_a_reference_every_metric_says_so_and_samples_are_still_counted():
    monitor = drift_monitor(None, window=100)
    replay(monitor, model_results(TEXT_DET, "original", EVEN[:40]))
    snapshot = monitor.snapshot()
    assert snapshot["reference"] is None and snapshot["samples"] == 40
    assert set(states(snapshot).values()) == {"no_reference"}
    assert snapshot["metrics"]["brightness"]["samples"] == 40
    assert snapshot["metrics"]["count"]["samples"] == 40
    assert snapshot["metrics"]["brightness"]["psi"] is None


def test_metrics_are_not_judged_before_the_window_holds_min_samples(text_reference):
    monitor = drift_monitor(text_reference, window=100, min_samples=60)
    for result in model_results(TEXT_DET, "dark", EVEN[:59]):
        observe(monitor, result)
    assert set(states(monitor.snapshot()).values()) == {"insufficient_samples"}
    observe(monitor, model_results(TEXT_DET, "dark", EVEN[59:60], start=59)[0])
    assert states(monitor.snapshot())["brightness"] == "alarm"


def test_a_new_reference_clears_a_raised_alarm_with_one_event(text_reference):
    monitor = drift_monitor(text_reference, window=60)
    replay(monitor, model_results(TEXT_DET, "dark", EVEN[:60]))
    assert "brightness" in {e.metric for e in monitor.take_events()}
    monitor.set_reference(None)
    cleared = [e for e in monitor.take_events() if e.metric == "brightness"]
    assert len(cleared) == 1 and cleared[0].kind == "alarm_cleared" and cleared[0].state == "ok"


def test_outputs_of_another_model_version_stay_out_of_the_output_distributions(text_reference):
    monitor = drift_monitor(text_reference, window=40, min_samples=20, version="v6")
    for result in model_results(TEXT_DET, "original", EVEN[:40], version="v4"):
        observe(monitor, result)
    snapshot = monitor.snapshot()
    assert snapshot["metrics"]["count"]["samples"] == 0
    assert snapshot["metrics"]["count"]["state"] == "insufficient_samples"
    assert snapshot["metrics"]["brightness"]["samples"] == 40


def test_failed_frames_count_for_the_inputs_only(text_reference):
    monitor = drift_monitor(text_reference, window=10, min_samples=1)
    image = video()[0]
    observe(monitor, result_of(0, image, None, error="EngineError: boom"))
    snapshot = monitor.snapshot()
    assert snapshot["metrics"]["brightness"]["samples"] == 1
    assert snapshot["metrics"]["count"]["samples"] == 0


def test_sample_every_takes_every_nth_frame_only(text_reference):
    monitor = drift_monitor(text_reference, window=100, sample_every=4, min_samples=1)
    predict = cached_predictor(TEXT_DET)
    for result in results(predict, frames("original", tuple(EVEN[:20]))):
        observe(monitor, result)
    assert monitor.snapshot()["samples"] == 5


def test_the_snapshot_is_a_valid_drift_payload(text_reference):
    monitor = DriftMonitor(MonitorSection(drift_window=60, drift_min_samples=30), text_reference, version="v4")
    replay(monitor, model_results(TEXT_DET, "dark", EVEN[:60]))
    payload = DriftPayload(**ENVELOPE, **monitor.snapshot())
    assert payload.metrics["brightness"].state == "alarm"
    assert DriftPayload.model_validate_json(payload.model_dump_json()) == payload


def test_a_malformed_reference_is_refused_with_the_field_named(text_reference):
    data = text_reference.model_dump(mode="json")
    data["inputs"]["brightness"]["counts"] = [1, 2]
    with pytest.raises(ReferenceDataError, match=r"reference\.inputs\.brightness"):
        drift_monitor(data, window=10)


@pytest.mark.parametrize("task", ["recognize", "Detect", "detect\n", ""])
def test_a_reference_is_built_only_for_a_task_it_can_describe(task):
    with pytest.raises(ReferenceDataError, match="unknown task"):
        ReferenceBuilder(task)
    assert ReferenceBuilder("detect").task == "detect"
