"""The results, event and counts payloads (one schema per head, the envelope of agent/wire/schema.py)
built from real predictions of the demo models and from hand-made ones, through JSON and back;
and the per-camera rate of results."""

from __future__ import annotations

import json

import cv2
import pytest

from agent.results import (
    RateLimiter,
    RateSettings,
    ResultsSettings,
    Scene,
    Tracker,
    TrackerSettings,
    ZoneSettings,
    counts_payload,
    event_payload,
    results_payload,
)
from agent.vision.transforms import Classification, Detection, Prediction
from agent.wire import EventPayload, ModelRef, PayloadError, decode_payload, encode_payload
from agent.wire.results import CountsPayload, ObjectEventData, ResultsPayload
from tests.results.test_recognize import DEMO, Detector, needs_rec, recognizer
from tests.results.test_tracks import obj

DETECTOR = ModelRef(name="text-det", version="v4")
RECOGNIZER = ModelRef(name="text-rec", version="v4")
WIDTH, HEIGHT = 640, 480
ENVELOPE = {"device_id": "cam-box-1", "ts": 1_700_000_000.5}


def round_trip(payload: ResultsPayload | CountsPayload | EventPayload) -> object:
    return decode_payload(type(payload), encode_payload(payload))


@needs_rec
def test_text_results_carry_polygons_the_text_read_in_each_and_track_ids_through_json() -> None:
    frame = cv2.imread(str(DEMO / "images" / "page.png"))
    height, width = frame.shape[:2]
    prediction = Detector()(frame)
    tracker = Tracker(TrackerSettings(confirm_frames=0))
    tracked = tracker.update(prediction.items)
    readings = recognizer()(frame, prediction.items)
    payload = results_payload(
        **ENVELOPE, seq=1, camera="front", frame_id=41, capture_ts=1_700_000_000.0, width=width,
        height=height, model=DETECTOR, prediction=prediction, tracked=tracked, readings=readings,
        second_stage=RECOGNIZER,
    )
    assert round_trip(payload) == payload
    document = json.loads(encode_payload(payload))
    assert document["schema_version"] == 1 and document["seq"] == 1
    texts = document["prediction"]["texts"]
    assert document["prediction"]["head"] == "text_detect" and len(texts) == prediction.count
    assert "Region-based segmentation" in [t["text"] for t in texts]
    assert sorted(t["track_id"] for t in texts) == sorted(o.track_id for o in tracked)
    assert all(0 <= v <= 1 for t in texts for point in t["polygon_norm"] for v in point)


def test_detect_results_give_each_box_in_pixels_and_normalised_with_its_track_id() -> None:
    car, ghost = Detection((64.0, 48.0, 128.0, 96.0), 0.9, "car"), Detection((600.0, 400.0, 700.0, 500.0), 0.5, "car")
    tracker = Tracker(TrackerSettings(confirm_frames=1))
    tracker.update([car])  # a track confirmed on its second sighting: the ghost is new, untracked
    prediction = Prediction("detect", (car, ghost))
    tracked = tracker.update(prediction.items)
    payload = results_payload(**ENVELOPE, seq=2, camera="front", frame_id=7, capture_ts=1.0, width=WIDTH,
                              height=HEIGHT, model=DETECTOR, prediction=prediction, tracked=tracked)
    boxes = payload.prediction.boxes  # type: ignore[union-attr]
    assert boxes[0].box_norm == pytest.approx((0.1, 0.1, 0.2, 0.2))
    assert boxes[0].track_id == tracked[0].track_id
    assert boxes[1].box_norm == pytest.approx((600 / 640, 400 / 480, 1.0, 1.0)), "clipped to the frame"
    assert boxes[1].track_id is None
    assert round_trip(payload) == payload


def test_classify_results_carry_the_top_k() -> None:
    prediction = Prediction("classify", (Classification("0", 0.7), Classification("180", 0.2)))
    payload = results_payload(**ENVELOPE, seq=3, camera="desk", frame_id=0, capture_ts=0.0, width=224,
                              height=224, model=ModelRef(name="orientation", version="0.0.11"), prediction=prediction)
    assert json.loads(encode_payload(payload))["prediction"] == {
        "head": "classify", "top_k": [{"label": "0", "score": 0.7}, {"label": "180", "score": 0.2}],
    }


def test_a_results_payload_with_an_unknown_head_a_nan_or_an_extra_field_is_refused() -> None:
    good = results_payload(**ENVELOPE, seq=4, camera="front", frame_id=1, capture_ts=1.0, width=WIDTH, height=HEIGHT,
                           model=DETECTOR, prediction=Prediction("detect", ()))
    document = json.loads(encode_payload(good))
    for change, message in (
        ({"prediction": {"head": "segment", "boxes": []}}, "prediction"),
        ({"capture_ts": float("nan")}, "capture_ts"),
        ({"extra": 1}, "not a known field"),
        ({"frame_id": -1}, "frame_id"),
    ):
        with pytest.raises(PayloadError, match=message):
            decode_payload(ResultsPayload, json.dumps({**document, **change}).encode())


def test_zone_events_go_out_as_event_payloads_whose_data_is_an_object_event() -> None:
    zone = ZoneSettings(name="door", polygon=((0, 0), (320, 0), (320, 480), (0, 480)))
    scene = Scene(ResultsSettings(zones=(zone,)))
    scene.update(0, 100.0, [obj(3, 10, 10, "person")])
    events = scene.update(1, 102.5, [])
    payloads = [event_payload(**ENVELOPE, seq=10 + i, camera="front", event=e) for i, e in enumerate(events)]
    assert [p.kind for p in payloads] == ["zone_left", "object_left"]
    assert payloads[0].message == "person #3 zone left door after 2.5 s"
    data = ObjectEventData.model_validate_json(json.dumps(payloads[0].data))
    assert (data.zone, data.dwell_s, data.track_id, data.frame_id) == ("door", 2.5, 3, 1)
    assert [round_trip(p) == p for p in payloads] == [True, True]


def test_counts_go_out_per_zone_and_label() -> None:
    payload = counts_payload(**ENVELOPE, seq=5, camera="front", frame_id=9, capture_ts=3.0,
                             counts={"door": {"person": 2}, "yard": {}})
    assert json.loads(encode_payload(payload))["zones"] == {"door": {"person": 2}, "yard": {}}
    with pytest.raises(PayloadError, match="greater than or equal to 0"):
        decode_payload(CountsPayload, encode_payload(payload).replace(b'"person":2', b'"person":-1'))


# ---------------------------------------------------------------- the rate of results


def test_every_frame_admits_every_frame() -> None:
    gate = RateLimiter(RateSettings(mode="every_frame"))
    assert all(gate.admit(i * 0.01) for i in range(50))


def test_max_rate_admits_at_most_n_a_second_from_a_faster_camera() -> None:
    gate = RateLimiter(RateSettings(mode="max_rate", max_per_s=5.0))
    admitted = [i for i in range(60) if gate.admit(i / 30.0)]  # 2 s of a 30 fps camera
    assert admitted == list(range(0, 60, 6))
    assert (gate.admitted, gate.held) == (10, 50)


def test_max_rate_keeps_n_a_second_from_a_camera_barely_faster_and_does_not_burst_after_a_stall() -> None:
    gate = RateLimiter(RateSettings(mode="max_rate", max_per_s=5.0))
    seven_fps = [i / 7.0 for i in range(14)]  # 2 s
    assert sum(gate.admit(t) for t in seven_fps) == 10
    after_stall = [10.0 + i / 30.0 for i in range(30)]  # 1 s of 30 fps after 8 s without frames
    assert [i for i, t in enumerate(after_stall) if gate.admit(t)] == [0, 6, 12, 18, 24]


def test_on_change_admits_a_frame_only_when_the_set_of_tracks_changes() -> None:
    gate = RateLimiter(RateSettings(mode="on_change"))
    frames = [set(), set(), {1}, {1}, {1, 2}, {2, 1}, {2}, set()]
    assert [gate.admit(float(i), ids) for i, ids in enumerate(frames)] == [
        True, False, True, False, True, False, True, True,
    ]
