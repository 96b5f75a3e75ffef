"""``fleet deploy --shadow``: the canary runs in shadow first; a canary that discards the model aborts the rollout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from agent.fleet import Rollout, RolloutSpec, plan_rollout
from agent.fleet.control import ControlClient
from agent.fleet.link import FleetLink
from agent.fleet.plan import RolloutPlan
from agent.fleet.record import RolloutRecord, RolloutStore
from agent.fleet.status import device_rows, render_table
from agent.fleet.view import FleetView
from agent.wire import DeploymentPayload, ErrorInfo, StatusPayload, encode_payload
from tests.support.mosquitto import Mosquitto, MqttProbe

NEW = "2.0.0"
SHADOW = {"duration_s": 600.0, "min_agreement": 0.95}


def _status(device: str) -> StatusPayload:
    return StatusPayload(device_id=device, ts=1.0, seq=1, state="online", agent_version="x", started_at=1.0,
                         groups=("lab",))


def _plan(devices: list[str], rollout_id: str) -> RolloutRecord:
    view = FleetView()
    for device in devices:
        view.apply(f"edge/{device}/status", encode_payload(_status(device)))
    spec = RolloutSpec("lab", "text-det", NEW, "file:///m.tar", "0" * 64, "bundle", RolloutPlan(5, (100,), 0, 0),
                       shadow=SHADOW)
    return plan_rollout(rollout_id, spec, view)


def _run(mosquitto: Mosquitto, record: RolloutRecord, store: RolloutStore, lines: list[str]) -> str:
    async def go() -> str:
        async with FleetLink(ControlClient(mosquitto.url)) as link:
            rollout = Rollout(link, record, store, report=lines.append)
            link.on_message = rollout.observe
            return (await rollout.run()).outcome

    return asyncio.run(go())


def test_only_the_canary_deploys_in_shadow():
    record = _plan(["cam-1", "cam-2", "cam-3"], "ro-bodies")
    canary, waves = record.waves[0], [d for wave in record.waves[1:] for d in wave]
    assert len(canary) == 1 and len(waves) == 2
    body = record.deploy_body(record.devices[canary[0]])
    assert body["mode"] == "shadow" and body["shadow"] == SHADOW
    assert all("mode" not in record.deploy_body(record.devices[d]) for d in waves)


def test_a_canary_that_discards_the_model_in_shadow_aborts_before_the_waves(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, [])
    record = _plan(["cam-1", "cam-2"], "ro-shadow-bad")
    canary, wave = record.waves[0][0], record.waves[1][0]
    discarded = DeploymentPayload(
        device_id=canary, ts=2.0, seq=9, deployment_id=record.devices[canary].deployment_id, name="text-det",
        version=NEW, state="discarded", step="shadow", progress=0.9, updated=2.0,
        error=ErrorInfo(code="shadow_discarded", message="shadow: agreement 0.000 over 30 frames is below the bound"),
        shadow={"candidate": NEW, "frames": 30, "agreement": 0.0, "cameras": {}})
    for device in (canary, wave):
        probe.publish(f"edge/{device}/status", encode_payload(_status(device)), retain=True)
    probe.publish(f"edge/{canary}/deployment", encode_payload(discarded), retain=True)
    lines: list[str] = []
    store = RolloutStore(tmp_path)
    assert _run(mosquitto, record, store, lines) == "aborted"
    saved = store.load("ro-shadow-bad")
    assert saved is not None
    assert saved.devices[canary].state == "discarded" and saved.devices[canary].agreement == 0.0
    assert saved.devices[wave].state == "pending" and saved.devices[wave].sends == 0
    assert saved.reason is not None and "discarded 2.0.0 in shadow" in saved.reason
    assert any(f"agreement {canary} 0.0" in line for line in lines), lines


def test_a_canary_that_agrees_in_shadow_is_recorded_with_its_agreement(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, [])
    record = _plan(["cam-9"], "ro-shadow-ok")
    committed = DeploymentPayload(
        device_id="cam-9", ts=2.0, seq=9, deployment_id=record.devices["cam-9"].deployment_id, name="text-det",
        version=NEW, state="committed", step="committed", progress=1.0, updated=2.0,
        shadow={"candidate": NEW, "frames": 30, "agreement": 0.99, "cameras": {}})
    probe.publish("edge/cam-9/status", encode_payload(_status("cam-9")), retain=True)
    probe.publish("edge/cam-9/deployment", encode_payload(committed), retain=True)
    assert _run(mosquitto, record, RolloutStore(tmp_path), []) == "succeeded"
    assert record.devices["cam-9"].state == "committed" and record.devices["cam-9"].agreement == 0.99


def test_fleet_status_shows_each_devices_shadow_agreement():
    view = FleetView()
    view.apply("edge/cam-9/status", encode_payload(_status("cam-9")))
    deployment = DeploymentPayload(
        device_id="cam-9", ts=2.0, seq=9, deployment_id="d-9", name="text-det", version=NEW, state="shadow",
        step="shadow", progress=0.9, updated=2.0, shadow={"candidate": NEW, "frames": 12, "agreement": 0.987})
    view.apply("edge/cam-9/deployment", encode_payload(deployment))
    rows = device_rows(view)
    assert rows[0]["shadow_agreement"] == 0.987
    table = render_table(rows).splitlines()
    assert "AGREEMENT" in table[0].split() and "0.987" in table[1].split()
