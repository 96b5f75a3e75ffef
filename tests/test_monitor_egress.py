"""The egress guard: only schema payloads leave; frames and crops in any disguise are blocked."""

import base64
import json
from typing import Any

import cv2
import pytest

from agent.monitor.drift import DriftMonitor
from agent.monitor.egress import EgressBlocked, EgressGuard
from agent.mqtt.signals import MONITOR_PAYLOADS, DriftPayload
from agent.mqtt.schema import PAYLOADS
from tests.monitor_support import video

ENVELOPE = {"device_id": "dev1", "ts": 1.0, "seq": 1}
MODELS = {**PAYLOADS, **MONITOR_PAYLOADS}


@pytest.fixture
def guard() -> EgressGuard:
    return EgressGuard(MODELS)


@pytest.fixture(scope="module")
def crop() -> Any:
    return video()[60][200:232, 300:332]


def event(**data: Any) -> bytes:
    return json.dumps({**ENVELOPE, "kind": "alarm_raised", "severity": "alarm",
                       "message": "drift brightness: ok -> alarm", "data": data}).encode()


def blocked_reason(guard: EgressGuard, suffix: str, payload: bytes) -> str:
    with pytest.raises(EgressBlocked) as caught:
        guard.check(suffix, payload)
    return caught.value.reason


def test_a_real_drift_payload_passes_unchanged(guard):
    monitor = DriftMonitor(None, window=10)
    encoded = DriftPayload(**ENVELOPE, **monitor.snapshot()).model_dump_json().encode()
    assert guard.check("telemetry/drift", encoded) is encoded
    assert guard.counts() == {"checked": 1, "blocked": 0, "by_reason": {}}


def test_ordinary_event_text_is_not_mistaken_for_binary(guard):
    payload = event(model="text-det", sha256="ab" * 32, value=0.31, labels=["0", "90", "180"],
                    path="/var/lib/edge-agent/engines/text-det/v4/model.onnx")
    assert guard.allows("events", payload)


def test_a_raw_frame_is_blocked_as_too_large(guard):
    assert blocked_reason(guard, "telemetry/drift", video()[0].tobytes()) == "too_large"


def test_a_raw_crop_is_blocked_as_binary(guard, crop):
    assert blocked_reason(guard, "events", crop.tobytes()) == "not_json"


def test_a_base64_jpeg_crop_in_an_event_is_blocked(guard, crop):
    ok, jpeg = cv2.imencode(".jpg", crop)
    assert ok
    payload = event(crop=base64.b64encode(jpeg).decode())
    assert blocked_reason(guard, "events", payload) == "encoded_blob"


def test_a_data_uri_is_blocked_however_short(guard):
    assert blocked_reason(guard, "events", event(preview="data:image/png;base64,iVBORw0KGgo=")) == (
        "encoded_blob")


def test_frame_bytes_smuggled_as_text_are_blocked(guard, crop):
    ok, jpeg = cv2.imencode(".jpg", crop[:8, :8])
    assert ok
    assert blocked_reason(guard, "events", event(crop=jpeg.tobytes().decode("latin-1"))) == (
        "control_characters")


def test_a_crop_as_nested_lists_of_pixels_is_blocked(guard, crop):
    assert blocked_reason(guard, "events", event(pixels=crop[:16, :16].tolist())) == "array"


def test_a_field_the_schema_does_not_know_is_blocked(guard):
    document = {**ENVELOPE, "version": None, "reference": None, "window": 10, "samples": 0,
                "metrics": {}, "frame_id": 12}
    assert blocked_reason(guard, "telemetry/drift", json.dumps(document).encode()) == "schema"


def test_a_topic_without_a_schema_is_blocked(guard):
    assert blocked_reason(guard, "telemetry/frames", event()) == "unknown_topic"


def test_every_block_is_counted_by_reason(guard, crop):
    guard.allows("events", crop.tobytes())
    guard.allows("events", crop.tobytes())
    guard.allows("telemetry/frames", event())
    guard.allows("events", event())
    assert guard.counts() == {"checked": 4, "blocked": 3,
                              "by_reason": {"not_json": 2, "unknown_topic": 1}}
