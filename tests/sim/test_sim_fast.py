"""The simulated fleet on the fast transport (``fleet simulate --transport fast``): the same wire as on the
agent's own session (commands answered once per id, the deployment's states, retained state, telemetry, the
will on a crash), and back online by itself after the broker restarts."""

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
from agent.sim.simulate import SimError, SimSpec
from tests.support.fleetproc import latest, payloads, retained, run, simulated_fleet, stop
from tests.support.mosquitto import WAIT_S, Mosquitto, MqttProbe, poll

FAST = ("--transport", "fast")


def test_fast_devices_answer_commands_deploy_once_per_id_send_telemetry_and_leave_a_will(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment", "edge/+/model", "edge/+/telemetry/health"])
    control = ControlClient(mosquitto.url)
    body = {"id": "dep-7", "name": "text-det", "version": "3.1.0", "url": "file:///models/text-det.tar",
            "sha256": hashlib.sha256(b"model").hexdigest(), "format": "bundle"}
    with simulated_fleet(mosquitto.port, 3, tmp_path / "sim.log", *FAST, "--period", "0.5s",
                         "--slow-deploy", "0.2s", "--probation", "0.2s"):
        ping = run("ping", "--broker", mosquitto.url, "--device", "sim-0000")
        first = asyncio.run(control.send("deploy", body, device="sim-0002", timeout_s=60))
        poll(lambda: latest(probe, "deployment").get("sim-0002", {}).get("state") == "committed",
             what="the deployment to commit")
        again = asyncio.run(control.send("deploy", body, device="sim-0002", timeout_s=60))
        poll(lambda: len(latest(probe, "telemetry/health")) == 3, what="health telemetry of the 3 devices")
        with simulated_fleet(mosquitto.port, 2, tmp_path / "sim-2.log", *FAST, "--id-prefix", "crash") as crashing:
            stop(crashing, signal.SIGKILL)
            lost = retained(mosquitto.port, "status", 5)
    offline = retained(mosquitto.port, "status", 5)
    assert ping.returncode == 0 and json.loads(ping.stdout)["result"] == {"pong": True}
    assert first[0].payload.ok and first[0].payload.result["deployment_id"] == "dep-7"
    assert again[0].payload.result == first[0].payload.result, "a repeated id is answered, not run again"
    states = [p["state"] for p in payloads(probe, "deployment") if p["deployment_id"] == "dep-7"]
    assert states == [step for step, _ in DEPLOY_STEPS] + ["active", "committed"]
    model = latest(probe, "model")["sim-0002"]
    assert (model["version"], model["previous"]["version"]) == ("3.1.0", "1.0.0")
    health = latest(probe, "telemetry/health")["sim-0001"]
    assert health["device_id"] == "sim-0001" and health["seq"] >= 0
    assert {d: s["state"] for d, s in lost.items() if d.startswith("crash-")} == {
        "crash-0000": "lost", "crash-0001": "lost"}, "the will of a killed simulator"
    assert {d: s["state"] for d, s in offline.items() if d.startswith("sim-")} == dict.fromkeys(
        ("sim-0000", "sim-0001", "sim-0002"), "offline"), "a clean stop says offline, not lost"


def test_fast_devices_come_back_online_after_the_broker_restarts(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    with simulated_fleet(mosquitto.port, 2, tmp_path / "sim.log", *FAST, "--id-prefix", "back") as sim:
        mosquitto.restart()  # not persistent: the retained state is gone until the devices publish it again
        probe = mqtt_probe(mosquitto.port, ["edge/+/status"])
        poll(lambda: {d: s["state"] for d, s in latest(probe, "status").items()} == {
            "back-0000": "online", "back-0001": "online"}, timeout=WAIT_S * 2, what="both devices online again")
        ping = run("ping", "--broker", mosquitto.url, "--device", "back-0001")
        assert sim.poll() is None, "the simulator rode out the restart"
    assert ping.returncode == 0 and json.loads(ping.stdout)["result"] == {"pong": True}


def test_an_unknown_transport_is_refused_by_name() -> None:
    with pytest.raises(SimError, match="transport must be session or fast, got 'udp'"):
        SimSpec(url="mqtt://127.0.0.1:1883", devices=1, transport="udp")  # type: ignore[arg-type]
