"""Bias: slice parity with the real text detector on the real video; feedback, constructed."""

import time

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from agent.core.config import BiasSection
from agent.monitor.bias import (
    BiasConfigError,
    BiasMonitor,
    SliceSpec,
    brightness_band,
    time_of_day,
)
from agent.vision.summary import observe
from agent.wire.signals import BiasPayload, FeedbackCommand
from tests.support.monitor_support import (
    TEXT_DET,
    Classification,
    Detection,
    Prediction,
    cached_predictor,
    frames,
    result_of,
    results,
)

ROBUST_SCENES = tuple(i for i in range(0, 270, 2) if 45 <= i < 90 or 180 <= i < 225)
"""The page and chelsea scenes, whose text the real detector finds as well when darkened (it loses
the faint text of the other scenes in the dark: a real effect, which this test is not about)."""
BANDS = (90.0, 230.0)
"""Darkened (x0.4) frames of those scenes are all below 90 luma, the originals within."""
ENVELOPE = {"device_id": "dev1", "ts": 1.0, "seq": 1}


class DarkBlind:
    """Wraps a detector: on dark frames it returns no detections (a brightness-dependent model)."""

    def __init__(self, predict, below: float = BANDS[0]) -> None:
        self.predict = predict
        self.below = below

    def __call__(self, image: np.ndarray) -> Prediction:
        if float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean()) < self.below:
            return Prediction("text_detect", ())
        return self.predict(image)


def balanced_frames() -> list[np.ndarray]:
    """Each frame of the robust scenes twice: as filmed (normal band) and darkened (dark band)."""
    pairs = zip(frames("original", ROBUST_SCENES), frames("dark", ROBUST_SCENES), strict=True)
    return [image for pair in pairs for image in pair]


def monitor(**overrides) -> BiasMonitor:
    settings = {"window": 1000, "min_samples": 30, "brightness_bands": BANDS, **overrides}
    return BiasMonitor(BiasSection(**{f"bias_{key}": value for key, value in settings.items()}))


def test_a_detector_blind_in_the_dark_raises_a_brightness_bias_alarm():
    bias = monitor()
    for result in results(DarkBlind(cached_predictor(TEXT_DET)), balanced_frames()):
        observe(bias, result)
    brightness = bias.snapshot()["slicings"]["brightness"]
    assert brightness["slices"]["dark"]["selection_rate"] == 0.0
    assert brightness["slices"]["normal"]["selection_rate"] > 0.5
    assert brightness["selection_rate"]["min_ratio"] == 0.0
    assert brightness["four_fifths_flag"] is True and brightness["state"] == "alarm"
    events = [e for e in bias.take_events() if e.metric == "brightness.selection_rate"]
    assert len(events) == 1 and events[0].state == "alarm" and events[0].measure == "ratio"


def test_the_real_detector_on_the_same_balanced_frames_raises_no_bias_alarm():
    bias = monitor()
    for result in results(cached_predictor(TEXT_DET), balanced_frames()):
        observe(bias, result)
    brightness = bias.snapshot()["slicings"]["brightness"]
    dark, normal = brightness["slices"]["dark"], brightness["slices"]["normal"]
    assert dark["samples"] == normal["samples"] == len(ROBUST_SCENES)
    assert brightness["selection_rate"]["min_ratio"] >= 0.9
    assert brightness["four_fifths_flag"] is False and brightness["state"] == "ok"
    assert bias.take_events() == []


def test_slices_with_too_few_frames_are_reported_as_insufficient_and_never_as_a_ratio():
    bias = monitor(min_samples=20)
    predict = cached_predictor(TEXT_DET)
    images = frames("original", ROBUST_SCENES)
    for camera, count in (("lobby", 30), ("dock", 30), ("attic", 5)):
        for result in results(predict, images[:count], source=camera):
            observe(bias, result)
    source = bias.snapshot()["slicings"]["source"]
    attic = source["slices"]["attic"]
    assert attic == {"samples": 5, "status": "insufficient_samples", "selection_rate": None,
                     "mean_confidence": None}
    rates = [source["slices"][c]["selection_rate"] for c in ("lobby", "dock")]
    assert source["selection_rate"]["min_ratio"] == pytest.approx(min(rates) / max(rates), abs=1e-6)


def test_one_measured_slice_is_not_a_comparison():
    bias = monitor(min_samples=5)
    for result in results(cached_predictor(TEXT_DET), frames("original", ROBUST_SCENES[:10])):
        observe(bias, result)
    source = bias.snapshot()["slicings"]["source"]
    assert source["state"] == "insufficient_samples"
    assert source["selection_rate"] == {"max_difference": None, "min_ratio": None}


def _detections_at(xs: list[float], width: int = 640, height: int = 480) -> Prediction:
    y = height / 2
    items = tuple(Detection((x * width - 5, y - 5, x * width + 5, y + 5), 0.9, "text") for x in xs)
    return Prediction("text_detect", items)


def test_manifest_regions_compare_where_in_the_frame_the_detector_fires():
    bias = BiasMonitor(BiasSection(bias_window=500, bias_min_samples=20),
                       {"regions": {"left": [0, 0, 0.5, 1], "right": [0.5, 0, 1, 1]}})
    image = frames("original", (60,))[0]
    for index in range(40):
        observe(bias, result_of(index, image, _detections_at([0.25] if index % 2 else [0.25, 0.3])))
    region = bias.snapshot()["slicings"]["region"]
    assert region["slices"]["left"]["selection_rate"] == 1.0
    assert region["slices"]["right"]["selection_rate"] == 0.0
    assert region["state"] == "alarm" and region["four_fifths_flag"] is True


@pytest.mark.parametrize(
    ("slices", "message"),
    [({"zones": {}}, r"slices\.zones: unknown slicing"),
     ({"regions": {"left": [0.5, 0, 0.2, 1]}}, r"slices\.regions"),
     ({"regions": {"left": [0, 0, 1]}}, r"slices\.regions\.left")],
)
def test_bad_manifest_slices_are_refused_naming_the_key(slices, message):
    with pytest.raises(BiasConfigError, match=message):
        SliceSpec.parse(slices)


def test_tiny_rate_differences_are_parity_whatever_their_ratio():
    bias = monitor(min_samples=50, min_difference=0.05)
    image = frames("original", (60,))[0]
    n = 0
    for camera, hits in (("a", 1), ("b", 2)):
        for i in range(100):
            prediction = _detections_at([0.5]) if i < hits else Prediction("text_detect", ())
            observe(bias, result_of(n, image, prediction, source=camera))
            n += 1
    source = bias.snapshot()["slicings"]["source"]
    assert source["selection_rate"]["min_ratio"] == 0.5 and source["four_fifths_flag"] is True
    assert source["state"] == "ok"


def _local(hour: int) -> float:
    return time.mktime((2024, 6, 3, hour, 30, 0, 0, 0, -1))


@pytest.mark.parametrize(("hour", "bucket"), [(3, "night"), (6, "morning"), (11, "morning"),
                                              (12, "afternoon"), (18, "evening"), (23, "evening")])
def test_time_of_day_buckets_by_local_hour(hour, bucket):
    assert time_of_day(_local(hour)) == bucket


def test_brightness_bands_by_mean_luma():
    assert [brightness_band(v, (60.0, 190.0)) for v in (10, 60, 189.9, 190)] == [
        "dark", "normal", "normal", "bright"]


def test_a_classifier_without_positive_labels_has_no_selection_rate_but_confidence_parity():
    bias = monitor(min_samples=10)
    image = frames("original", (60,))[0]
    for i in range(40):
        top = Classification("0", 0.9 if i < 20 else 0.6)
        prediction = Prediction("classify", (top, Classification("90", 0.05)))
        observe(bias, result_of(i, image, prediction, source="a" if i < 20 else "b"))
    source = bias.snapshot()["slicings"]["source"]
    assert source["state"] == "not_applicable"
    assert source["slices"]["a"]["selection_rate"] is None
    assert source["mean_confidence"]["max_difference"] == pytest.approx(0.3)
    assert source["mean_confidence"]["min_ratio"] == pytest.approx(0.6 / 0.9, abs=1e-6)


# ----- labelled feedback -----------------------------------------------------------------------


def grey(luma: int) -> np.ndarray:
    return np.full((48, 64, 3), luma, dtype=np.uint8)


def labelled_set(bias: BiasMonitor, start: int, luma: int, *, tp: int, fn: int, fp: int,
                 tn: int) -> None:
    """Frames of one brightness band with a known confusion matrix; feedback sent for each."""
    truth = [True] * (tp + fn) + [False] * (fp + tn)
    said = [True] * tp + [False] * fn + [True] * fp + [False] * tn
    for offset, predicted in enumerate(said):
        prediction = _detections_at([0.5], 64, 48) if predicted else Prediction("text_detect", ())
        observe(bias, result_of(start + offset, grey(luma), prediction))
    for offset, positive in enumerate(truth):
        assert bias.feedback(start + offset, positive=positive)


def test_feedback_gives_per_slice_recall_fpr_accuracy_and_the_equalized_odds_gap():
    bias = BiasMonitor(BiasSection(bias_min_labelled=20, bias_frames_kept=1000))
    dark = {"tp": 40, "fn": 10, "fp": 10, "tn": 40}
    normal = {"tp": 45, "fn": 5, "fp": 3, "tn": 47}
    labelled_set(bias, 0, 30, **dark)
    labelled_set(bias, 100, 128, **normal)
    feedback = bias.snapshot()["feedback"]
    assert feedback["matched"] == 200 and feedback["unmatched"] == 0
    brightness = feedback["slicings"]["brightness"]
    for band, m in (("dark", dark), ("normal", normal)):
        got = brightness["slices"][band]
        assert got["samples"] == sum(m.values())
        assert got["recall"] == pytest.approx(m["tp"] / (m["tp"] + m["fn"]))
        assert got["fpr"] == pytest.approx(m["fp"] / (m["fp"] + m["tn"]))
        assert got["accuracy"] == pytest.approx((m["tp"] + m["tn"]) / sum(m.values()))
    tpr_gap = normal["tp"] / 50 - dark["tp"] / 50
    fpr_gap = dark["fp"] / 50 - normal["fp"] / 50
    assert brightness["tpr_gap"] == pytest.approx(tpr_gap)
    assert brightness["fpr_gap"] == pytest.approx(fpr_gap)
    assert brightness["equalized_odds_gap"] == pytest.approx(max(tpr_gap, fpr_gap))
    assert brightness["state"] == "warn"
    assert feedback["slicings"]["source"]["state"] == "insufficient_samples"
    assert [e.metric for e in bias.take_events()] == ["brightness.equalized_odds"]


def test_feedback_for_forgotten_frames_is_counted_as_unmatched():
    bias = BiasMonitor(BiasSection(bias_frames_kept=10))
    for index in range(30):
        observe(bias, result_of(index, grey(100), Prediction("text_detect", ())))
    assert not bias.feedback(5, positive=True)
    assert bias.feedback(25, positive=False)
    command = FeedbackCommand.model_validate_json(b'{"id": "fb-1", "items": ['
                                                  b'{"frame_id": 29, "positive": true},'
                                                  b'{"frame_id": 0, "positive": true}]}')
    assert bias.apply(command) == {"matched": 1, "unmatched": 1}
    assert bias.snapshot()["feedback"]["unmatched"] == 2


def test_label_feedback_scores_a_classifier_by_its_top_label():
    bias = BiasMonitor(BiasSection(bias_min_labelled=4, bias_positive_labels=("180",)))
    for index, (said, luma) in enumerate([("0", 30), ("180", 30), ("0", 30), ("0", 30),
                                          ("180", 128), ("180", 128), ("0", 128), ("90", 128)]):
        prediction = Prediction("classify", (Classification(said, 0.9),))
        observe(bias, result_of(index, grey(luma), prediction))
    truth = ["0", "180", "180", "90", "180", "0", "0", "90"]
    for index, label in enumerate(truth):
        assert bias.feedback(index, label=label)
    slices = bias.snapshot()["feedback"]["slicings"]["brightness"]["slices"]
    assert slices["dark"]["accuracy"] == pytest.approx(2 / 4)
    assert slices["normal"]["accuracy"] == pytest.approx(3 / 4)
    assert slices["dark"]["recall"] == pytest.approx(1 / 2)
    assert slices["normal"]["fpr"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "payload",
    [b'{"id": "x", "items": [{"frame_id": 1}]}',
     b'{"id": "x", "items": [{"frame_id": 1, "label": "a", "positive": true}]}',
     b'{"id": "x", "items": [{"frame_id": -1, "positive": true}]}',
     b'{"id": "x", "items": []}',
     b'{"id": "x", "items": [{"frame_id": 1, "positive": true, "image": "..."}]}'],
)
def test_the_feedback_command_refuses_malformed_items(payload):
    with pytest.raises(ValidationError):
        FeedbackCommand.model_validate_json(payload)


def test_the_snapshot_is_a_valid_bias_payload():
    bias = monitor()
    for result in results(DarkBlind(cached_predictor(TEXT_DET)), balanced_frames()[:80]):
        observe(bias, result)
    bias.feedback(3, positive=True)
    payload = BiasPayload(**ENVELOPE, **bias.snapshot())
    assert payload.slicings["brightness"].slices["dark"].samples == 40
    assert BiasPayload.model_validate_json(payload.model_dump_json()) == payload


def test_feedback_names_the_camera_when_frame_indices_of_several_cameras_collide():
    bias = BiasMonitor(BiasSection(bias_frames_kept=100))
    observe(bias, result_of(7, grey(100), _detections_at([0.5], 64, 48), source="door"))
    assert bias.feedback(7, positive=True), "one camera seen: its index alone names the frame"
    observe(bias, result_of(7, grey(100), Prediction("text_detect", ()), source="yard"))
    assert not bias.feedback(7, positive=True), "frame 7 of which camera? unmatched"
    assert bias.feedback(7, positive=True, camera="door")
    assert bias.feedback(7, positive=False, camera="yard")
    assert not bias.feedback(7, positive=False, camera="dock")
    command = FeedbackCommand.model_validate_json(b'{"id": "fb-2", "items": ['
                                                  b'{"frame_id": 7, "camera": "yard", "positive": false}]}')
    assert bias.apply(command) == {"matched": 1, "unmatched": 0}
    assert set(bias.snapshot()["slicings"]["source"]["slices"]) == {"door", "yard"}
