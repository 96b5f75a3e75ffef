"""``edge-agent fleet events``: the devices' object, zone and line events, live, as JSON lines."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from agent.results.payloads import event_payload
from agent.results.zones import ResultEvent
from agent.wire import EventPayload, StatusPayload, encode_payload
from tests.support.fleetproc import start, stop
from tests.support.mosquitto import Mosquitto, MqttProbe, poll

GROUPS = {"cam-a": ("hall",), "cam-b": ("yard",), "cam-c": ("hall", "yard")}


def _publish_fleet(probe: MqttProbe) -> list[EventPayload]:
    """Retained status of three devices, then one object, zone and line event each and one health warning."""
    now = time.time()
    for device, groups in GROUPS.items():
        status = StatusPayload(device_id=device, ts=now, seq=0, state="online", agent_version="test",
                               started_at=now, groups=groups)
        probe.publish(f"edge/{device}/status", encode_payload(status), retain=True)
    sent: list[EventPayload] = []
    for device in GROUPS:
        happenings = (ResultEvent("object_entered", 10, now, 3, "text", (1.0, 2.0, 30.0, 40.0)),
                      ResultEvent("zone_entered", 11, now, 3, "text", (1.0, 2.0, 30.0, 40.0), zone="door"),
                      ResultEvent("line_crossed", 12, now, 3, "text", (5.0, 2.0, 34.0, 40.0), line="gate",
                                  direction="in"))
        for seq, happening in enumerate(happenings):
            sent.append(event_payload(device_id=device, seq=seq, ts=now, camera="front", event=happening))
        sent.append(EventPayload(device_id=device, seq=3, ts=now, kind="camera_lost", severity="warning",
                                 message="front stopped"))
    for payload in sent:
        probe.publish(f"edge/{payload.device_id}/events", encode_payload(payload))
    return sent


def _lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{\"device\"")]


def test_events_prints_each_selected_event_as_one_json_line_with_its_device(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    selections = {"all": (), "hall_zones": ("--group", "hall", "--kind", "zone_entered", "--kind", "line_crossed"),
                  "one_device": ("--device", "cam-b")}
    logs = {name: tmp_path / f"{name}.out" for name in selections}
    processes = {name: start("fleet", "events", "--broker", mosquitto.url, "--log-level", "info", *extra,
                             log=logs[name]) for name, extra in selections.items()}
    try:
        for name, log in logs.items():
            poll(lambda log=log: "events_subscribed" in log.read_text(), what=f"{name} subscribed")
        probe = MqttProbe(mosquitto.port)
        try:
            sent = _publish_fleet(probe)
        finally:
            probe.close()
        expected = {
            "all": sent,
            "hall_zones": [p for p in sent if "hall" in GROUPS[p.device_id]
                           and p.kind in ("zone_entered", "line_crossed")],
            "one_device": [p for p in sent if p.device_id == "cam-b"],
        }
        for name, log in logs.items():
            poll(lambda log=log, name=name: len(_lines(log)) >= len(expected[name]), what=f"{name} lines")
    finally:
        codes = [stop(process, signal.SIGINT) for process in processes.values()]
    assert codes == [0, 0, 0]
    for name, log in logs.items():
        printed = _lines(log)
        wanted = [{"device": p.device_id, **p.model_dump(mode="json")} for p in expected[name]]
        assert printed == wanted, name
    crossing = next(line for line in _lines(logs["one_device"]) if line["kind"] == "line_crossed")
    assert crossing["data"]["line"] == "gate" and crossing["data"]["direction"] == "in"
    assert crossing["data"]["camera"] == "front" and crossing["device"] == "cam-b"


def test_events_refuses_a_wildcard_device_and_an_unreachable_broker(tmp_path: Path) -> None:
    from tests.support.fleetproc import run
    from tests.support.mosquitto import free_port

    wildcard = run("fleet", "events", "--broker", "mqtt://127.0.0.1:1", "--device", "cam/#")
    assert wildcard.returncode == 2 and "device id" in wildcard.stderr
    unreachable = run("fleet", "events", "--broker", f"mqtt://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr
