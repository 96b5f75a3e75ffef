"""The simulated fleet answers shadow deploys as the agent does, so ``fleet deploy --shadow`` runs against it.

A real mosquitto, the simulator and ``fleet deploy`` as real CLI subprocesses: a canary that agrees
in shadow is promoted and the waves follow; a canary that disagrees (``--fail-mode shadow``) is
discarded, never serves, and the rollout aborts before any wave. One device's shadow run that waits
for a ``promote`` command, and the refusals around it (``not_ready``, ``no_shadow``, ``busy``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.fleet.control import ControlClient
from tests.support.fake_artifact import fake_artifact
from tests.support.fleetproc import latest, payloads, retained, run, simulated_fleet
from tests.support.mosquitto import Mosquitto, MqttProbe, poll

DEVICES = 4
OLD, NEW = "1.0.0", "2.0.0"
FAST = ("--group", "lab", "--period", "1s", "--slow-deploy", "0.2s", "--probation", "0.2s", "--shadow-time", "0.5s")
PLAN = ("--canary", "25%", "--waves", "100%", "--abort-failures", "10%", "--wait-healthy", "0s")
PENDING_S = "10s"
"""How long the manual run stays short of its bound: the early promote comes well within it."""
AGREEMENT = 0.97
"""What the simulated devices agree in shadow (``--shadow-agreement``)."""


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return fake_artifact(tmp_path)


def _fleet_deploy(mosquitto: Mosquitto, artifact: Path, state_dir: Path, rollout_id: str):
    return run("fleet", "deploy", "--broker", mosquitto.url, "--group", "lab", "--name", "text-det",
               "--version", NEW, "--url", artifact.as_uri(), *PLAN, "--rollout-id", rollout_id,
               "--state-dir", str(state_dir), "--shadow", "30s", "--min-agreement", "95%")


def _record(state_dir: Path, rollout_id: str) -> dict[str, Any]:
    return json.loads((state_dir / f"{rollout_id}.json").read_text())


def _versions(mosquitto: Mosquitto) -> Counter[str]:
    return Counter(m["version"] for m in retained(mosquitto.port, "model", DEVICES).values())


def test_a_canary_that_agrees_in_shadow_is_promoted_and_the_waves_follow(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], artifact: Path, tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment", "edge/+/events"])
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *FAST,
                         "--shadow-agreement", str(AGREEMENT)):
        done = _fleet_deploy(mosquitto, artifact, tmp_path / "rollouts", "ro-shadow-ok")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _versions(mosquitto) == {NEW: DEVICES}
    saved = _record(tmp_path / "rollouts", "ro-shadow-ok")
    assert saved["outcome"] == "succeeded"
    canary = saved["waves"][0]
    assert len(canary) == 1
    assert saved["devices"][canary[0]]["agreement"] == AGREEMENT
    assert all(saved["devices"][d]["agreement"] is None for d in saved["waves"][1]), "the waves swap, no shadow"
    assert f"agreement {canary[0]} {AGREEMENT}" in done.stdout, done.stdout
    states = [p["state"] for p in payloads(probe, "deployment") if p["device_id"] == canary[0]]
    assert states.index("shadow") < states.index("active") < states.index("committed"), states
    final = latest(probe, "deployment")[canary[0]]
    assert final["state"] == "committed" and final["shadow"]["agreement"] == AGREEMENT, final
    kinds = [p["kind"] for p in payloads(probe, "events") if p["device_id"] == canary[0]]
    assert "shadow_promoted" in kinds, kinds


def test_a_canary_that_disagrees_in_shadow_is_discarded_and_the_rollout_aborts(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], artifact: Path, tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment"])
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *FAST, "--fail-rate", "1.0",
                         "--fail-mode", "shadow"):
        done = _fleet_deploy(mosquitto, artifact, tmp_path / "rollouts", "ro-shadow-bad")
        assert done.returncode == 1, done.stdout + done.stderr
        assert _versions(mosquitto) == {OLD: DEVICES}, "the discarded model never served"
    saved = _record(tmp_path / "rollouts", "ro-shadow-bad")
    assert saved["outcome"] == "aborted" and "in shadow" in saved["reason"], saved["reason"]
    canary = saved["waves"][0][0]
    assert saved["devices"][canary]["state"] == "discarded" and saved["devices"][canary]["agreement"] == 0.0
    assert Counter(e["state"] for e in saved["devices"].values()) == {"discarded": 1, "pending": DEVICES - 1}
    final = latest(probe, "deployment")[canary]
    assert final["state"] == "discarded" and final["error"]["code"] == "shadow_discarded", final
    assert "below the bound 0.95" in final["error"]["message"]


def test_a_shadow_run_that_waits_for_promote_serves_on_the_command_and_bad_requests_change_nothing(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    device = "sim-0000"
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment"])
    body = {"id": "dep-manual", "name": "text-det", "version": NEW, "url": "file:///models/text-det.tar",
            "sha256": "0" * 64, "format": "bundle", "mode": "shadow",
            "shadow": {"auto_promote": False, "duration_s": 60}}

    async def send(name: str, payload: dict[str, Any]) -> Any:
        control = ControlClient(mosquitto.url)  # a client (and client id) per command: some run at once
        return (await control.send(name, payload, device=device, timeout_s=60))[0].payload

    async def scenario() -> dict[str, Any]:
        nothing = await send("promote", {"id": "promote-nothing"})
        deploy = asyncio.create_task(send("deploy", body))
        await asyncio.to_thread(poll, lambda: latest(probe, "deployment").get(device, {}).get("state") == "shadow",
                                what="the shadow run")
        early = await send("promote", {"id": "promote-early"})
        busy = await send("deploy", {**body, "id": "dep-busy"})
        await asyncio.to_thread(poll, lambda: (latest(probe, "deployment")[device].get("shadow") or {}).get(
            "agreement") is not None, what="the shadow run's report")
        promoted = await send("promote", {"id": "promote-now"})
        return {"nothing": nothing, "early": early, "busy": busy, "promoted": promoted, "deploy": await deploy}

    with simulated_fleet(mosquitto.port, 1, tmp_path / "sim.log", *FAST, "--shadow-time", PENDING_S):
        replies = asyncio.run(scenario())
        assert _versions_of(mosquitto, 1) == {NEW: 1}
    assert not replies["nothing"].ok and replies["nothing"].error.code == "no_shadow"
    assert not replies["early"].ok and replies["early"].error.code == "not_ready"
    assert not replies["busy"].ok and replies["busy"].error.code == "busy"
    assert replies["promoted"].ok and replies["promoted"].result["version"] == NEW, replies["promoted"]
    deploy = replies["deploy"]
    assert deploy.ok and deploy.result["shadow"]["agreement"] == 0.98, deploy
    states = [p["state"] for p in payloads(probe, "deployment") if p["deployment_id"] == "dep-manual"]
    assert "shadow" in states and states[-1] in ("active", "committed"), states


def _versions_of(mosquitto: Mosquitto, n: int) -> Counter[str]:
    return Counter(m["version"] for m in retained(mosquitto.port, "model", n).values())
