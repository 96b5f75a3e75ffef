"""The results publisher between the frame loop and MQTT, on real parts: a real session (with a
real mosquitto where it must connect), the real outbox, the real egress guard; the camera's
``[[camera]].results`` table checked by the config file and by ``cmd/cameras`` alike."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from agent.core.config import ConfigError, parse_config
from agent.monitor.egress import EgressBlocked, EgressGuard
from agent.mqtt.outbox import MemoryOutbox
from agent.mqtt.session import MqttSession, SessionState
from agent.results import RateSettings, ResultsPublisher, ResultsSettings, ZoneSettings, results_payload
from agent.vision.cameras import CameraError, camera_entry
from agent.vision.pipeline import FrameResult
from agent.vision.sources import Frame
from agent.vision.transforms import Detection, Prediction
from agent.wire import PAYLOADS, ModelRef, encode_payload, json_schemas
from tests.support.mosquitto import Mosquitto, poll
from tests.support.results_rig import TOPICS, WAIT_S, publishing, results_publisher, session

IMAGE = np.zeros((480, 640, 3), np.uint8)
SETTINGS = ResultsSettings(
    zones=(ZoneSettings(name="left", polygon=((0, 0), (320, 0), (320, 480), (0, 480))),),
    rate=RateSettings(mode="every_frame"),
)


def frame_result(index: int, boxes: int) -> FrameResult:
    """Frame ``index`` of camera ``front`` on which the detector saw ``boxes`` boxes in a row."""
    detections = tuple(Detection((10.0 + 60 * i, 100.0, 50.0 + 60 * i, 140.0), 0.9, "text") for i in range(boxes))
    frame = Frame(index=index, image=IMAGE, captured_at=time.monotonic(), wall_time=time.time(), source="front")
    return FrameResult(frame, "text-det", "v4", {}, Prediction("text_detect", detections), True)


def publisher(link: MqttSession, queue_size: int = 512) -> ResultsPublisher:
    return results_publisher(link, lambda name: SETTINGS if name == "front" else None, Path("/nonexistent"),
                             queue_size)


def test_the_frame_thread_hands_over_at_most_its_queue_and_counts_the_rest_then_events_keep_their_order():
    outbox = MemoryOutbox(100)
    results = publisher(session("mqtt://127.0.0.1:1", outbox), queue_size=3)
    started = time.perf_counter()
    for index, boxes in enumerate([1, 1, 2, 0, 0, 0, 0, 0]):  # no loop takes them: the queue fills
        results.observe(frame_result(index, boxes))
    assert time.perf_counter() - started < 5.0  # never waits on anything (generous: a shared CPU)
    assert results.handoff_dropped == 5 and results.failures.count == 0
    assert results.health()["pending"] == 3, "handed over, not yet published"

    async def drain() -> None:
        task = asyncio.create_task(results.run())
        await asyncio.wait_for(results.close(), WAIT_S)
        await task

    asyncio.run(drain())
    assert results.dropped_offline == 3 and results.published == 0, "results are never queued"
    assert results.health()["pending"] == 0
    events = [json.loads(item.payload) for item in outbox.peek_batch(100)]
    assert {item.topic for item in outbox.peek_batch(100)} == {TOPICS.events}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # The three frames kept: the box seen once (not yet an object), seen again (it enters), a second box.
    assert [(e["kind"], e["data"]["track_id"], e["data"]["frame_id"]) for e in events] == [
        ("object_entered", 1, 1), ("zone_entered", 1, 1)]
    assert results.events == 2 and results.counts == 2, "counts {} then {'text': 1}"


def test_a_failure_in_a_cameras_results_is_counted_and_never_raised_into_the_frame_loop():
    results = publisher(session("mqtt://127.0.0.1:1"))
    broken = frame_result(0, 1)
    results.settings_of = lambda name: 1 / 0  # type: ignore[assignment,misc,return-value]
    results.observe(broken)
    assert results.failures.count == 1
    results.observe(frame_result(1, 1).__class__(broken.frame, "text-det", "v4", {}, None, False, "boom"))
    assert results.failures.count == 1, "a failed frame has nothing to track"


def test_live_results_reach_a_subscriber_and_are_dropped_and_counted_while_the_broker_is_away(
        tmp_path, mqtt_probe):
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    probe = mqtt_probe(broker.port, [TOPICS.results("front"), TOPICS.counts("front")])
    link = session(broker.url)
    results = publisher(link)

    async def scenario() -> None:
        async with publishing(link, results):
            results.observe(frame_result(0, 2))
            await asyncio.to_thread(poll, lambda: results.published == 1 and probe.snapshot(TOPICS.counts("front"))
                                    and probe.snapshot(TOPICS.results("front")), WAIT_S, "the first results, counts")
            broker.kill()
            await asyncio.to_thread(poll, lambda: link.state is not SessionState.CONNECTED, WAIT_S, "the loss")
            results.observe(frame_result(1, 2))
            await asyncio.to_thread(poll, lambda: results.dropped_offline == 1, WAIT_S, "the drop")

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()
    received = [json.loads(m.payload) for m in probe.snapshot(TOPICS.results("front"))]
    assert [(r["frame_id"], r["seq"], len(r["prediction"]["texts"])) for r in received] == [(0, 1, 2)]
    assert received[0]["prediction"]["texts"][0]["track_id"] is None, "seen once: not an object yet"
    counts = json.loads(probe.snapshot(TOPICS.counts("front"))[0].payload)
    assert counts["zones"] == {"left": {}}
    # Frame 1 (broker away): its results dropped; its two objects' events and new counts kept
    # (the outbox and the retained state), for the next connection.
    assert results.health() == {"published": 1, "dropped_offline": 1, "held": 0, "pending": 0, "events": 4,
                                "counts": 2,
                                "handoff_dropped": 0, "failures": 0, "snapshots_sent": 0,
                                "snapshots_dropped_offline": 0, "snapshots_blocked": 0, "snapshots_dropped_queue": 0}
    assert link.status().outbox_depth == 4


def test_results_and_counts_are_in_the_schema_and_the_egress_guard_checks_them():
    schemas = json_schemas()
    assert {"results/+", "counts/+"} <= set(schemas)
    assert schemas["results/+"]["title"] == "ResultsPayload"
    guard = EgressGuard(PAYLOADS)
    prediction = frame_result(0, 6).prediction
    assert prediction is not None
    payload = encode_payload(results_payload(
        device_id="dev1", seq=1, ts=time.time(), camera="front", frame_id=0, capture_ts=time.time(), width=640,
        height=480, model=ModelRef(name="text-det", version="v4"), prediction=prediction))
    assert guard.check("results/front", payload) == payload
    assert guard.redact("results/front", payload) is payload, "six text boxes pass unchanged"
    many = frame_result(0, 100).prediction
    assert many is not None
    page = encode_payload(results_payload(
        device_id="dev1", seq=1, ts=time.time(), camera="front", frame_id=0, capture_ts=time.time(), width=640,
        height=480, model=ModelRef(name="text-det", version="v4"), prediction=many))
    assert guard.redact("results/front", page) is page, "a hundred boxes, each bounded on its own"
    pixels = json.loads(page)
    pixels["prediction"]["texts"] = [{**pixels["prediction"]["texts"][0], "polygon": [[v, v]] * 3}
                                     for v in range(1200)]  # 32x32x3 values disguised as boxes
    assert "[redacted: numbers]" in guard.redact("results/front", json.dumps(pixels).encode()).decode()
    tampered = json.dumps({**json.loads(payload), "frame": "x"}).encode()
    with pytest.raises(EgressBlocked) as blocked:
        guard.check("results/front", tampered)
    assert blocked.value.reason == "schema"


BAD_ZONE = {"name": "yard", "uri": "yard.mp4",
            "results": {"zones": [{"name": "Front Door", "polygon": [[0, 0], [1, 0]]}]}}


def test_a_cameras_results_table_is_checked_by_the_file_and_by_the_cameras_command_alike():
    text = '[[camera]]\nname = "yard"\nuri = "yard.mp4"\n[[camera.results.zones]]\nname = "Front Door"\n' \
           'polygon = [[0, 0], [1, 0]]\n'
    with pytest.raises(ConfigError) as from_file:
        parse_config(text, "config.toml", environ={})
    assert "camera[0] (yard).results.zones.0.name" in str(from_file.value)
    assert "camera[0] (yard).results.zones.0.polygon" in str(from_file.value)
    with pytest.raises(CameraError) as from_command:
        camera_entry(BAD_ZONE)
    assert from_command.value.code == "camera_invalid"
    assert "camera (yard).results.zones.0.name" in from_command.value.message
    assert "camera (yard).results.zones.0.polygon" in from_command.value.message
    good = camera_entry({"name": "yard", "uri": "yard.mp4", "results": {"rate": {"mode": "on_change"}, "qos": 1}})
    assert good.results.rate.mode == "on_change" and good.results.qos == 1
    assert parse_config('[[camera]]\nname = "yard"\nuri = "yard.mp4"\n', environ={}).camera[0].results == \
        ResultsSettings()
