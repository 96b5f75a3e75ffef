"""``fleet watch`` turns the cameras' results, object events and retained counts into Prometheus
series with bounded labels, and the dashboard's data carries each device's counts and last events."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.fleet import sinks
from agent.fleet.consumer import Consumer
from agent.fleet.control import ControlClient
from agent.fleet.results import OBJECT_EVENT_KINDS
from agent.results.payloads import counts_payload, event_payload
from agent.results.zones import EVENT_KINDS, ResultEvent
from agent.wire import EventPayload, ModelRef, encode_payload
from agent.wire.results import BoxItem, ClassifyResult, ClassItem, CountsPayload, DetectResult, ResultsPayload
from tests.support.fleetproc import start, stop, wait_started
from tests.support.mosquitto import Mosquitto, MqttProbe, free_port, poll

MODEL = ModelRef(name="yolo", version="1.0.0")


def _box(label: str, track: int) -> BoxItem:
    return BoxItem(box=(10.0, 20.0, 50.0, 60.0), box_norm=(0.1, 0.2, 0.5, 0.6), score=0.9, label=label,
                   track_id=track)


def _results(device: str, camera: str, seq: int, labels: list[str]) -> ResultsPayload:
    return ResultsPayload(device_id=device, seq=seq, ts=time.time(), camera=camera, frame_id=seq,
                          capture_ts=time.time(), width=100, height=100, model=MODEL,
                          prediction=DetectResult(boxes=tuple(_box(label, i) for i, label in enumerate(labels))))


def _event(device: str, seq: int, kind: str, label: str, zone: str | None = None) -> EventPayload:
    happening = ResultEvent(kind, seq, time.time(), 7, label, (1.0, 2.0, 3.0, 4.0), zone=zone)  # type: ignore[arg-type]
    return event_payload(device_id=device, seq=seq, ts=time.time(), camera="front", event=happening)


def _counts(device: str, seq: int, zones: dict[str, dict[str, int]]) -> CountsPayload:
    return counts_payload(device_id=device, seq=seq, ts=time.time(), camera="front", frame_id=seq,
                          capture_ts=time.time(), counts=zones)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _sample(metrics: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    found = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else None


def test_the_fleet_knows_every_object_event_kind_of_the_agent() -> None:
    assert OBJECT_EVENT_KINDS == EVENT_KINDS


def test_watch_serves_results_events_and_counts_as_series_per_device_camera_zone_and_label(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    port, page_port = free_port(), free_port()
    log = tmp_path / "watch.log"
    watch = start("fleet", "watch", "--broker", mosquitto.url, "--listen", f"127.0.0.1:{port}",
                  "--dashboard-port", str(page_port), log=log)
    probe = MqttProbe(mosquitto.port)
    try:
        wait_started(watch, log)
        for seq in (0, 4, 9):  # results' seq gaps are drops by design: never counted as gaps
            probe.publish("edge/cam-1/results/front", encode_payload(_results("cam-1", "front", seq,
                                                                                ["person", "person", "car"])), qos=0)
        classify = ResultsPayload(device_id="cam-2", seq=0, ts=time.time(), camera="door", frame_id=0,
                                  capture_ts=time.time(), width=10, height=10, model=MODEL,
                                  prediction=ClassifyResult(top_k=(ClassItem(label="cat", score=0.8),
                                                                   ClassItem(label="dog", score=0.1))))
        probe.publish("edge/cam-2/results/door", encode_payload(classify), qos=0)
        probe.publish("edge/cam-1/results/front", b'{"camera": "front", "prediction": 3}', qos=0)
        probe.publish("edge/cam-1/events", encode_payload(_event("cam-1", 0, "object_entered", "person")))
        probe.publish("edge/cam-1/events", encode_payload(_event("cam-1", 1, "zone_entered", "person", "door")))
        probe.publish("edge/cam-1/events", encode_payload(_event("cam-1", 2, "zone_entered", "person", "door")))
        probe.publish("edge/cam-1/counts/front", encode_payload(_counts("cam-1", 0, {"door": {"person": 2}})),
                      retain=True)
        probe.publish("edge/cam-1/counts/front", encode_payload(_counts("cam-1", 1, {"door": {"person": 1,
                                                                                             "car": 1}})),
                      retain=True)
        url = f"http://127.0.0.1:{port}/metrics"
        poll(lambda: _sample(_get(url), "edge_fleet_zone_objects", device="cam-1", camera="front", zone="door",
                             label="car") == 1, what="the second counts as gauges")
        poll(lambda: _sample(_get(url), "edge_fleet_results_total", device="cam-2", camera="door") == 1,
             what="the classify result")
        metrics = _get(url)
        api = json.loads(_get(f"http://127.0.0.1:{page_port}/api/fleet"))
    finally:
        probe.close()
        stop(watch)
    assert _sample(metrics, "edge_fleet_results_total", device="cam-1", camera="front") == 3
    assert _sample(metrics, "edge_fleet_result_objects_total", device="cam-1", camera="front", label="person") == 6
    assert _sample(metrics, "edge_fleet_result_objects_total", device="cam-1", camera="front", label="car") == 3
    assert _sample(metrics, "edge_fleet_result_objects_total", device="cam-2", camera="door", label="cat") == 1
    assert _sample(metrics, "edge_fleet_result_objects_total", device="cam-2", camera="door", label="dog") is None
    assert _sample(metrics, "edge_fleet_object_events_total", device="cam-1", camera="front", zone="door",
                   label="person", kind="zone_entered") == 2
    assert _sample(metrics, "edge_fleet_object_events_total", device="cam-1", camera="front", zone="",
                   label="person", kind="object_entered") == 1
    assert _sample(metrics, "edge_fleet_zone_objects", device="cam-1", camera="front", zone="door",
                   label="person") == 1
    assert _sample(metrics, "edge_fleet_rejected_messages_total") == 1
    assert "results" not in "".join(re.findall(r"^edge_fleet_seq_gaps_total.*$", metrics, re.M))
    assert _sample(metrics, "edge_fleet_messages_total", kind="results") == 4
    device = next(d for d in api["devices"] if d["id"] == "cam-1")
    assert device["counts"] == {"front": {"door": {"person": 1, "car": 1}}}
    assert [e["kind"] for e in device["object_events"]] == ["zone_entered", "zone_entered", "object_entered"]
    assert device["object_events"][0]["zone"] == "door" and device["object_events"][0]["label"] == "person"


def _metrics(consumer: Consumer) -> str:
    return consumer.metrics.registry.render()


def test_labels_past_their_bound_are_counted_under_other_and_left_out_of_gauges(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "MAX_OBJECT_LABELS", 2)
    monkeypatch.setattr(sinks, "MAX_ZONE_LABELS", 1)
    consumer = Consumer(ControlClient("mqtt://127.0.0.1:1"))
    labels = ["person", "car", "bus", "tram"]
    consumer.handle("edge/cam-1/results/front", encode_payload(_results("cam-1", "front", 0, labels)))
    consumer.handle("edge/cam-1/counts/front", encode_payload(_counts("cam-1", 0, {"door": {"person": 1},
                                                                                   "yard": {"car": 2}})))
    for seq, zone in enumerate(("door", "yard", "gate")):
        consumer.handle("edge/cam-1/events", encode_payload(_event("cam-1", seq, "zone_left", "person", zone)))
    text = _metrics(consumer)
    counted: dict[str, Any] = {label: _sample(text, "edge_fleet_result_objects_total", device="cam-1",
                                              camera="front", label=label) for label in [*labels, "_other"]}
    assert counted == {"person": 1, "car": 1, "bus": None, "tram": None, "_other": 2}
    assert _sample(text, "edge_fleet_zone_objects", device="cam-1", camera="front", zone="door", label="person") == 1
    assert "yard" not in text and 'zone="_other",label="car"' not in text
    assert _sample(text, "edge_fleet_object_events_total", device="cam-1", camera="front", zone="_other",
                   label="person", kind="zone_left") == 2
    assert _sample(text, "edge_fleet_label_overflow_values", label="label") == 2
    assert _sample(text, "edge_fleet_label_overflow_values", label="zone") == 2


def test_a_cleared_counts_topic_drops_that_cameras_gauges_and_dashboard_counts() -> None:
    consumer = Consumer(ControlClient("mqtt://127.0.0.1:1"))
    consumer.handle("edge/cam-1/counts/front", encode_payload(_counts("cam-1", 0, {"door": {"person": 3}})))
    assert _sample(_metrics(consumer), "edge_fleet_zone_objects", device="cam-1", camera="front", zone="door",
                   label="person") == 3
    consumer.handle("edge/cam-1/counts/front", b"")
    assert "edge_fleet_zone_objects{" not in _metrics(consumer)
    assert consumer.snapshot()["devices"][0]["counts"] == {}
