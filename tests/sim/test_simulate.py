"""The simulated fleet speaks the real protocol: commands, idempotent deploys, the will on a crash."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.fleet.control import ControlClient
from agent.sim.device import DEPLOY_STEPS
from agent.sim.simulate import SimError, SimSpec, device_ids
from tests.support.fleetproc import latest, payloads, retained, run, simulated_fleet, stop
from tests.support.mosquitto import Mosquitto, MqttProbe, poll


def test_simulated_devices_answer_commands_and_deploy_once_per_id(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment", "edge/+/model"])
    control = ControlClient(mosquitto.url)
    body = {"id": "dep-42", "name": "text-det", "version": "3.1.0", "url": "file:///models/text-det.tar",
            "sha256": hashlib.sha256(b"model").hexdigest(), "format": "bundle"}
    with simulated_fleet(mosquitto.port, 3, tmp_path / "sim.log", "--slow-deploy", "0.2s", "--probation", "0.2s"):
        ping = run("ping", "--broker", mosquitto.url, "--device", "sim-0000")
        status = run("status", "--broker", mosquitto.url, "--device", "sim-0001")
        first = asyncio.run(control.send("deploy", body, device="sim-0002", timeout_s=60))
        poll(lambda: latest(probe, "deployment").get("sim-0002", {}).get("state") == "committed",
             what="the deployment to commit")
        again = asyncio.run(control.send("deploy", body, device="sim-0002", timeout_s=60))
        with simulated_fleet(mosquitto.port, 3, tmp_path / "sim-2.log", "--id-prefix", "crash") as crashing:
            stop(crashing, signal.SIGKILL)
            lost = retained(mosquitto.port, "status", 6)
    assert ping.returncode == 0 and json.loads(ping.stdout)["result"] == {"pong": True}
    assert json.loads(status.stdout)["result"]["model"]["version"] == "1.0.0"
    assert first[0].payload.ok and first[0].payload.result["deployment_id"] == "dep-42"
    assert again[0].payload.result == first[0].payload.result
    states = [p["state"] for p in payloads(probe, "deployment") if p["deployment_id"] == "dep-42"]
    assert states == [step for step, _ in DEPLOY_STEPS] + ["active", "committed"]
    model = latest(probe, "model")["sim-0002"]
    assert (model["version"], model["previous"]["version"], model["sha256"]) == ("3.1.0", "1.0.0", body["sha256"])
    assert {d: s["state"] for d, s in lost.items() if d.startswith("crash-")} == dict.fromkeys(
        ("crash-0000", "crash-0001", "crash-0002"), "lost")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("devices", 0, "devices must be at least 1"),
    ("fail_rate", 1.5, "fail-rate must be within 0..1"),
    ("period_s", 0.0, "period must be above 0"),
])
def test_bad_simulation_settings_name_what_is_wrong(field: str, value: float, message: str) -> None:
    settings = {"url": "mqtt://127.0.0.1:1883", "devices": 3, field: value}
    with pytest.raises(SimError, match=message):
        SimSpec(**settings)  # type: ignore[arg-type]


def test_a_fleet_split_over_processes_holds_every_device_once_and_stops_them_all(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    with simulated_fleet(mosquitto.port, 7, tmp_path / "sim.log", "--id-prefix", "split", "--processes", "3") as sim:
        ping = run("ping", "--broker", mosquitto.url, "--device", "split-0006")
        children = Path(f"/proc/{sim.pid}/task/{sim.pid}/children").read_text().split()
    statuses = retained(mosquitto.port, "status", 7)
    assert ping.returncode == 0 and json.loads(ping.stdout)["result"] == {"pong": True}
    assert len(children) == 3
    assert {d: s["state"] for d, s in statuses.items() if d.startswith("split-")} == {
        f"split-{i:04d}": "offline" for i in range(7)}
    assert sim.returncode == 0
    assert not [c for c in children if Path(f"/proc/{c}").exists()]


def test_each_shard_takes_every_nth_device_and_together_they_are_the_fleet() -> None:
    whole = device_ids(SimSpec(url="mqtt://127.0.0.1:1883", devices=10))
    shards = [device_ids(SimSpec(url="mqtt://127.0.0.1:1883", devices=10, shard=k, shards=3)) for k in range(3)]
    assert sorted(d for shard in shards for d in shard) == whole
    assert [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(SimError, match=r"shard must be within 0\.\.2"):
        SimSpec(url="mqtt://127.0.0.1:1883", devices=10, shard=3, shards=3)
