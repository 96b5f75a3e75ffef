"""The egress guard: only schema payloads leave; frames and crops in any disguise are blocked."""

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.core.config import DriftSection, EgressSection, MonitorSection
from agent.monitor.drift import DriftMonitor
from agent.monitor.egress import EgressBlocked, EgressGuard
from agent.wire import PAYLOADS
from agent.wire.signals import MONITOR_PAYLOADS, DriftPayload
from tests.support.fleetproc import simulated_fleet
from tests.support.monitor_support import video
from tests.support.mosquitto import Mosquitto, MqttProbe, poll

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
    monitor = DriftMonitor(DriftSection(drift_window=10, drift_min_samples=10))
    encoded = DriftPayload(**ENVELOPE, **monitor.snapshot()).model_dump_json().encode()
    assert guard.check("telemetry/drift", encoded) is encoded
    assert guard.counts() == {"checked": 1, "blocked": 0, "by_reason": {}, "images": 0, "image_bytes": 0}


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
                              "by_reason": {"not_json": 2, "unknown_topic": 1}, "images": 0, "image_bytes": 0}


def jpeg_base64(crop: Any) -> str:
    ok, jpeg = cv2.imencode(".jpg", crop)
    assert ok
    return base64.b64encode(jpeg).decode()


def drift(**extra: Any) -> bytes:
    document = {**ENVELOPE, "version": None, "reference": None, "window": 10, "samples": 0, "metrics": {}}
    return json.dumps({**document, **extra}).encode()


def test_base64_broken_by_a_dot_every_hundred_characters_is_blocked(guard, crop):
    encoded = jpeg_base64(crop)
    dotted = ".".join(encoded[i:i + 100] for i in range(0, len(encoded), 100))
    # No unbroken run as long as the guard's blob rule needs: only the other rules can catch it.
    assert "." in dotted and max(map(len, dotted.split("."))) < MonitorSection().egress_blob_min_chars
    assert blocked_reason(guard, "events", event(crop=dotted)) == "encoded_blob"
    spaced = " ".join(encoded[i:i + 20] for i in range(0, len(encoded), 20))
    assert blocked_reason(guard, "events", event(crop=spaced)) == "encoded_blob"


def test_hex_broken_into_words_is_blocked(guard, crop):
    hexed = crop[:8, :8].tobytes().hex()
    assert blocked_reason(guard, "events", event(crop=" ".join(hexed[i:i + 32] for i in range(0, len(hexed), 32)))) == (
        "encoded_blob")


def test_a_crop_written_as_numbers_in_a_string_is_blocked(guard, crop):
    text = ", ".join(str(v) for v in crop[:4, :8].flatten().tolist())
    assert blocked_reason(guard, "events", event(crop=text)) == "numeric_text"


def test_a_crop_spread_over_many_short_arrays_is_blocked(guard, crop):
    rows = {f"row{i}": row.flatten().tolist() for i, row in enumerate(crop)}
    assert max(len(r) for r in rows.values()) <= guard.max_array_items
    assert blocked_reason(guard, "events", event(**rows)) == "numbers"


def test_hashes_ids_paths_and_versions_in_text_are_not_encoded_data(guard):
    message = (f"sha256 mismatch: expected {'ab' * 32}, got {'cd' * 32}; command 3f2a9c1e-77b4-4d0e-9a51-"
               f"0c6f1d2e3b4a for text-det v4.1.0-rc2 at /var/lib/edge-agent/engines/text-det/4.1.0/model.onnx")
    payload = json.dumps({**ENVELOPE, "kind": "deploy_failed", "severity": "warning", "message": message,
                          "data": {"sha256": "ab" * 32, "previous": "cd" * 32, "values": [0.1] * 200}}).encode()
    assert guard.allows("events", payload)
    assert guard.redact("events", payload) is payload


def test_a_reply_keeps_its_id_and_loses_only_the_offending_value(guard, crop):
    encoded = jpeg_base64(crop)
    dotted = ".".join(encoded[i:i + 100] for i in range(0, len(encoded), 100))
    reply = json.dumps({**ENVELOPE, "id": "cmd-7", "ok": True, "command": "status",
                        "result": {"note": dotted, "rows": {f"r{i}": [1.0] * 100 for i in range(30)},
                                   "fps": 14.9}}).encode()
    cleaned = json.loads(guard.redact("reply", reply))
    assert cleaned["id"] == "cmd-7" and cleaned["ok"] is True and cleaned["result"]["fps"] == 14.9
    assert cleaned["result"]["note"] == "[redacted: encoded_blob]"
    assert "[redacted: numbers]" in json.dumps(cleaned["result"]["rows"])
    counts = guard.counts()
    assert counts["by_reason"]["redacted.encoded_blob"] == 1
    assert counts["by_reason"]["redacted.numbers"] >= 1
    assert counts["blocked"] == sum(counts["by_reason"].values())


def test_drift_telemetry_with_numbers_beyond_the_bound_is_blocked(guard):
    metrics = {f"m{i}": {"histogram": [0.01] * 200} for i in range(11)}
    assert blocked_reason(guard, "telemetry/drift", drift(metrics=metrics)) == "numbers"


def test_every_payload_a_simulated_fleet_publishes_passes_unchanged(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/#"])
    with simulated_fleet(mosquitto.port, 4, tmp_path / "sim.log", "--period", "0.3s", "--alarm-rate", "1.0"):
        poll(lambda: {m.topic.split("/", 2)[2] for m in probe.snapshot()} >= {
            "status", "model", "events", "telemetry/health", "telemetry/latency", "telemetry/drift",
            "telemetry/bias", "telemetry/leak"}, what="every kind of payload")
    guard = EgressGuard(MODELS)
    messages = [m for m in probe.snapshot() if m.payload]
    for message in messages:
        # The simulator's signal payloads are simpler than the agent's schema: only what the
        # detectors find is asked here (redact applies them all, without the schema).
        assert guard.redact(message.topic.split("/", 2)[2], message.payload) is message.payload
    assert guard.counts() == {"checked": len(messages), "blocked": 0, "by_reason": {}, "images": 0,
                              "image_bytes": 0}


def test_a_jpeg_leaves_only_on_a_camera_s_snapshots_topic_and_is_counted(guard, crop):
    jpeg = cv2.imencode(".jpg", crop)[1].tobytes()
    assert guard.check_image("snapshots/front", jpeg) is jpeg
    assert guard.counts()["images"] == 1 and guard.counts()["image_bytes"] == len(jpeg)
    for suffix in ("results/front", "events", "snapshots", "snapshots/front/more", "telemetry/health"):
        with pytest.raises(EgressBlocked) as caught:
            guard.check_image(suffix, jpeg)
        assert caught.value.reason == "image_topic", suffix
    png = cv2.imencode(".png", crop)[1].tobytes()
    for data in (png, crop.tobytes(), jpeg[:-2], b'{"ts": 1}'):
        with pytest.raises(EgressBlocked) as caught:
            guard.check_image("snapshots/front", data)
        assert caught.value.reason == "not_jpeg"
    assert blocked_reason(guard, "snapshots/front", jpeg) == "unknown_topic", "no JSON payload goes there either"
    counts = guard.counts()
    assert counts["images"] == 1 and counts["by_reason"] == {"image_topic": 5, "not_jpeg": 4, "unknown_topic": 1}


def test_a_snapshot_larger_than_the_image_bound_is_blocked(crop):
    guard = EgressGuard(MODELS, EgressSection(egress_max_image_bytes=4096))
    big = cv2.imencode(".jpg", cv2.resize(video()[60], (640, 480)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert len(big) > 4096
    with pytest.raises(EgressBlocked) as caught:
        guard.check_image("snapshots/front", big)
    assert caught.value.reason == "too_large" and guard.counts()["images"] == 0
