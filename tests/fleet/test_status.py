"""``edge-agent fleet status``: the table of devices, filtered by group and by alarm."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from agent.sim.device import fraction
from agent.wire import ModelPayload, StatusPayload, encode_payload
from tests.support.fleetproc import run, simulated_fleet
from tests.support.mosquitto import Mosquitto, MqttProbe

DEVICES = 8
ALARM_RATE = 0.4


def test_status_table_shows_every_device_and_filters_alarms(mosquitto: Mosquitto, tmp_path: Path) -> None:
    alarmed = {f"sim-{i:04d}" for i in range(DEVICES) if fraction(f"sim-{i:04d}", "alarm") < ALARM_RATE}
    assert 0 < len(alarmed) < DEVICES
    common = ("fleet", "status", "--broker", mosquitto.url, "--window", "2")
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", "--group", "hall", "--period", "0.5s",
                         "--alarm-rate", str(ALARM_RATE)):
        table = run(*common)
        rows = run(*common, "--json")
        only_alarms = run(*common, "--alarm", "--json")
        other_group = run(*common, "--group", "yard")
    for done in (table, rows, only_alarms, other_group):
        assert done.returncode == 0, done.stderr

    lines = table.stdout.splitlines()
    assert lines[0].split() == ["DEVICE", "STATUS", "MODEL", "VERSION", "CAMERAS", "FPS", "P95_MS", "DRIFT", "BIAS",
                                "LEAK", "AGREEMENT", "LAST_SEEN"]
    body = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert set(body) == {f"sim-{i:04d}" for i in range(DEVICES)}
    assert all(cells[1:4] == ["online", "text-det", "1.0.0"] for cells in body.values())
    assert lines[-1] == f"{DEVICES} devices, {DEVICES} online, {len(alarmed)} with alarms"

    parsed = json.loads(rows.stdout)
    assert len(parsed) == DEVICES
    for row in parsed:
        assert row["groups"] == ["hall"]
        assert row["fps"] > 0 and row["latency_p95_ms"] > 0
        assert row["drift"] == ("alarm" if row["device"] in alarmed else "ok")
        assert row["bias"] == "ok" and row["leak"] == "ok"
        assert row["last_seen_s"] is not None

    assert {row["device"] for row in json.loads(only_alarms.stdout)} == alarmed
    header = "DEVICE  STATUS  MODEL  VERSION  CAMERAS  FPS  P95_MS  DRIFT  BIAS  LEAK  AGREEMENT  LAST_SEEN"
    assert other_group.stdout.splitlines() == [header, "0 devices, 0 online, 0 with alarms"]


ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[31m\u202e\x9b1m\r"


def test_escape_codes_a_device_publishes_never_reach_the_terminal(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe]) -> None:
    device = "evil-dev"
    probe = mqtt_probe(mosquitto.port, [])
    now = time.time()
    status = StatusPayload(device_id=device, ts=now, seq=1, state="online", agent_version=f"1{ESCAPES}",
                           started_at=now, groups=(f"hall{ESCAPES}",))
    model = ModelPayload(device_id=device, ts=now, seq=1, name=f"det{ESCAPES}", version=f"2.0{ESCAPES}",
                         sha256="0" * 64, runtime="onnxruntime", since=now)
    probe.publish(f"edge/{device}/status", encode_payload(status), retain=True)
    probe.publish(f"edge/{device}/model", encode_payload(model), retain=True)
    done = run("fleet", "status", "--broker", mosquitto.url, "--window", "1")
    as_json = run("fleet", "status", "--broker", mosquitto.url, "--window", "1", "--json")
    assert done.returncode == 0 and as_json.returncode == 0, done.stderr + as_json.stderr
    assert all(c.isprintable() for line in done.stdout.splitlines() for c in line), repr(done.stdout)
    assert all(c.isprintable() or c == "\n" for c in as_json.stdout), repr(as_json.stdout)
    assert done.stdout.splitlines()[1].split()[:4] == ["evil-dev", "online", "det[2J]0;owned[31m1m",
                                                       "2.0[2J]0;owned[31m1m"]
    assert json.loads(as_json.stdout)[0]["version"] == f"2.0{ESCAPES}"


def test_status_takes_the_broker_and_prefix_from_an_agents_config(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    now = time.time()
    status = StatusPayload(device_id="dock-1", ts=now, seq=1, state="online", agent_version="1", started_at=now,
                           groups=("hall",))
    mqtt_probe(mosquitto.port, []).publish("site/dock-1/status", encode_payload(status), retain=True)
    config = tmp_path / "config.toml"
    config.write_text(f'[agent]\ndevice_id = "dock-1"\n\n[mqtt]\nurl = "{mosquitto.url}"\nprefix = "site"\n')
    done = run("fleet", "status", "--config", str(config), "--window", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert [row["device"] for row in json.loads(done.stdout)] == ["dock-1"]
    both = run("fleet", "status", "--config", str(config), "--broker", mosquitto.url)
    neither = run("fleet", "status", "--window", "1")
    assert both.returncode == neither.returncode == 2
    assert "leave out --broker" in both.stderr and "--config CONFIG" in neither.stderr
