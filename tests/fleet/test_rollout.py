"""Staged rollouts over simulated devices on a real mosquitto, driven through ``edge-agent fleet deploy``."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.fleet import Rollout, RolloutSpec, plan_rollout
from agent.fleet.control import ControlClient
from agent.fleet.link import FleetLink
from agent.fleet.plan import RolloutPlan, assign_waves
from agent.fleet.record import ROLLBACK_SUFFIX, RolloutRecord, RolloutStore
from agent.fleet.view import FleetView
from agent.sim.device import fails
from agent.wire import DeploymentPayload, ErrorInfo, ReplyPayload, StatusPayload, encode_payload
from tests.support.fake_artifact import fake_artifact
from tests.support.fleetproc import payloads, retained, run, simulated_fleet, start, stop
from tests.support.mosquitto import WAIT_S, Mosquitto, MqttProbe, poll

DEVICES = 20
OLD, NEW = "1.0.0", "2.0.0"
FAST = ("--group", "lab", "--period", "1s", "--slow-deploy", "0.3s", "--probation", "0.3s")
PLAN = ("--canary", "5%", "--waves", "25%,50%,100%", "--abort-failures", "10%", "--wait-healthy", "1s")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return fake_artifact(tmp_path)


def deploy_args(mosquitto: Mosquitto, artifact: Path, state_dir: Path, rollout_id: str, *plan: str) -> list[str]:
    return ["fleet", "deploy", "--broker", mosquitto.url, "--group", "lab", "--name", "text-det",
            "--version", NEW, "--url", artifact.as_uri(), *(plan or PLAN), "--rollout-id", rollout_id,
            "--state-dir", str(state_dir)]


def record(state_dir: Path, rollout_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads((state_dir / f"{rollout_id}.json").read_text())


def versions(mosquitto: Mosquitto) -> Counter[str]:
    return Counter(m["version"] for m in retained(mosquitto.port, "model", DEVICES).values())


def test_rollout_over_twenty_devices_commits_everywhere(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], artifact: Path, tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment"])
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *FAST):
        done = run(*deploy_args(mosquitto, artifact, tmp_path / "rollouts", "ro-ok"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert versions(mosquitto) == {NEW: DEVICES}
    saved = record(tmp_path / "rollouts", "ro-ok")
    assert saved["outcome"] == "succeeded"
    assert [len(w) for w in saved["waves"]] == [1, 4, 5, 10]
    assert Counter(e["state"] for e in saved["devices"].values()) == {"committed": DEVICES}
    committed = {p["device_id"] for p in payloads(probe, "deployment") if p["state"] == "committed"}
    assert len(committed) == DEVICES
    assert "canary settled: 1/1 committed" in done.stdout
    assert "wave 3 settled: 10/10 committed" in done.stdout
    assert done.stdout.count(" committed\n") >= DEVICES


def test_failing_canary_aborts_and_leaves_the_fleet_on_the_old_model(
        mosquitto: Mosquitto, artifact: Path, tmp_path: Path) -> None:
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *FAST, "--fail-rate", "1.0"):
        done = run(*deploy_args(mosquitto, artifact, tmp_path / "rollouts", "ro-bad"))
        assert done.returncode == 1, done.stdout + done.stderr
        assert versions(mosquitto) == {OLD: DEVICES}
    saved = record(tmp_path / "rollouts", "ro-bad")
    assert saved["outcome"] == "aborted"
    assert saved["stage"] == 0
    states = Counter(e["state"] for e in saved["devices"].values())
    assert states == {"rolled_back": 1, "pending": DEVICES - 1}
    assert "abort: 1 of 1 devices failed" in done.stdout


def rollout_id_failing_in_first_wave(fail_rate: float) -> str:
    """A rollout id whose canary passes and whose first wave fails (decided by hashes, not by timing)."""
    plan = RolloutPlan(5, (25, 50, 100), 10, 1)
    devices = [f"sim-{i:04d}" for i in range(DEVICES)]
    for n in range(1000):
        waves = assign_waves(f"ro-revert-{n}", devices, plan)
        if not fails(waves[0][0], NEW, fail_rate) and sum(fails(d, NEW, fail_rate) for d in waves[1]) >= 1:
            return f"ro-revert-{n}"
    raise AssertionError("no rollout id fits")


def test_abort_after_the_canary_rolls_back_every_device_that_took_the_new_model(
        mosquitto: Mosquitto, artifact: Path, tmp_path: Path) -> None:
    rollout_id = rollout_id_failing_in_first_wave(0.3)
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *FAST, "--fail-rate", "0.3"):
        done = run(*deploy_args(mosquitto, artifact, tmp_path / "rollouts", rollout_id))
        assert done.returncode == 1, done.stdout + done.stderr
        assert versions(mosquitto) == {OLD: DEVICES}
    saved = record(tmp_path / "rollouts", rollout_id)
    took = saved["waves"][0] + [d for d in saved["waves"][1] if not fails(d, NEW, 0.3)]
    assert sorted(d for d, e in saved["devices"].items() if e["state"] == "reverted") == sorted(took)
    assert f"rolling back {len(took)} devices" in done.stdout


def test_a_killed_rollout_resumes_without_redeploying_committed_devices(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], artifact: Path, tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/deployment"])
    state_dir = tmp_path / "rollouts"
    args = deploy_args(mosquitto, artifact, state_dir, "ro-resume", "--canary", "5%", "--waves", "25%,50%,100%",
                       "--wait-healthy", "0s")
    slow = ("--group", "lab", "--period", "1s", "--slow-deploy", "1.5s", "--probation", "0.5s")
    with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *slow):
        first = start(*args, log=tmp_path / "first.log")

        def reached_wave_two() -> bool:
            path = state_dir / "ro-resume.json"
            return first.poll() is None and path.exists() and record(state_dir, "ro-resume")["stage"] >= 2

        poll(reached_wave_two, timeout=WAIT_S * 4, what="the rollout to reach its second wave")
        stop(first, signal.SIGKILL)
        before = record(state_dir, "ro-resume")
        committed_before = {d for d, e in before["devices"].items() if e["state"] == "committed"}
        assert len(committed_before) >= 5
        assert before["outcome"] == "running"

        second = run(*args)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "resuming rollout ro-resume at stage 2" in second.stdout
        assert versions(mosquitto) == {NEW: DEVICES}
    received = Counter(p["device_id"] for p in payloads(probe, "deployment")
                       if p["state"] == "received" and p["deployment_id"].startswith("ro-resume-"))
    assert received == dict.fromkeys(received, 1) and len(received) == DEVICES
    after = record(state_dir, "ro-resume")
    assert after["outcome"] == "succeeded"
    assert all(after["devices"][d]["sends"] == before["devices"][d]["sends"] for d in committed_before)


def committed_behind(probe: MqttProbe, rollout_id: str) -> RolloutRecord:
    """A rollout of NEW planned for cam-1 (online in lab), whose retained deployment already says committed."""
    status = StatusPayload(device_id="cam-1", ts=1.0, seq=1, state="online", agent_version="x", started_at=1.0,
                           groups=("lab",))
    view = FleetView()
    view.apply("edge/cam-1/status", encode_payload(status))
    spec = RolloutSpec("lab", "text-det", NEW, "file:///m.tar", "0" * 64, "bundle", RolloutPlan(5, (100,), 0, 0))
    record = plan_rollout(rollout_id, spec, view)
    deployment = DeploymentPayload(device_id="cam-1", ts=2.0, seq=9, name="text-det", version=NEW,
                                   deployment_id=record.devices["cam-1"].deployment_id, state="committed",
                                   step="committed", progress=1.0, updated=2.0)
    probe.publish("edge/cam-1/status", encode_payload(status), retain=True)
    probe.publish("edge/cam-1/deployment", encode_payload(deployment), retain=True)
    return record


def test_a_device_recorded_pending_whose_deployment_already_committed_is_not_sent_again(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    """The previous run sent the command and died before writing it down: the retained topic tells."""
    record = committed_behind(mqtt_probe(mosquitto.port, []), "ro-race")

    async def resume() -> str:
        async with FleetLink(ControlClient(mosquitto.url)) as link:
            rollout = Rollout(link, record, RolloutStore(tmp_path))
            link.on_message = rollout.observe
            return (await rollout.run()).outcome

    assert asyncio.run(resume()) == "succeeded"
    assert record.devices["cam-1"].state == "committed"
    assert record.devices["cam-1"].sends == 0


def test_a_state_change_the_broker_dropped_is_read_again_from_the_retained_topic(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    """A broker drops what overflows its queue for a client; a stalled rollout reads the retained state again."""
    record = committed_behind(mqtt_probe(mosquitto.port, []), "ro-dropped")
    entry = record.devices["cam-1"]
    entry.state, entry.sent_at, entry.last_sent_at, entry.sends = "loading", 1.0, 1.0, 1

    async def stalled() -> str:
        async with FleetLink(ControlClient(mosquitto.url)) as link:
            link.view.device("cam-1").deployment = None
            rollout = Rollout(link, record, RolloutStore(tmp_path), refresh_after_s=0.5, clock=lambda: 2.0)
            link.on_message = rollout.observe
            return (await rollout.run()).outcome

    assert asyncio.run(stalled()) == "succeeded"
    assert entry.state == "committed" and entry.sends == 1


def test_a_signed_rollout_sends_every_device_the_statement_of_what_the_control_plane_hashed(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], artifact: Path, tmp_path: Path) -> None:
    from agent.models.fetch import generate_keypair, load_public_key, verify_statement
    from tests.support.artifacts import sha256

    generate_keypair(tmp_path / "ctl.key", tmp_path / "ctl.pub")
    probe = mqtt_probe(mosquitto.port, ["edge/+/cmd/deploy"])
    with simulated_fleet(mosquitto.port, 3, tmp_path / "sim.log", *FAST):
        done = run(*deploy_args(mosquitto, artifact, tmp_path / "rollouts", "ro-signed"), "--format", "bundle",
                   "--sign", str(tmp_path / "ctl.key"))
        assert done.returncode == 0, done.stdout + done.stderr
    sent = [json.loads(m.payload) for m in probe.snapshot()]
    assert len(sent) == 3 and len({json.dumps(c["statement"], sort_keys=True) for c in sent}) == 1
    key = load_public_key(tmp_path / "ctl.pub")
    for command in sent:
        assert command["sha256"] == sha256(artifact)
        verify_statement(key, command["statement"], name="text-det", version=NEW, format="bundle",
                         sha256=sha256(artifact))
    assert record(tmp_path / "rollouts", "ro-signed")["statement"] == sent[0]["statement"]


def test_a_rollout_without_format_sends_what_the_artifact_is(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], demo_dir: Path, tmp_path: Path) -> None:
    probe = mqtt_probe(mosquitto.port, ["edge/+/cmd/deploy"])
    onnx_model = demo_dir / "models" / "text-det-v6" / "model.onnx"
    with simulated_fleet(mosquitto.port, 2, tmp_path / "sim.log", *FAST):
        done = run(*deploy_args(mosquitto, onnx_model, tmp_path / "rollouts", "ro-onnx"))
        assert done.returncode == 0, done.stdout + done.stderr
    sent = [json.loads(m.payload) for m in probe.snapshot()]
    assert len(sent) == 2 and {command["format"] for command in sent} == {"onnx"}
    assert record(tmp_path / "rollouts", "ro-onnx")["format"] == "onnx"
    progress = done.stderr.splitlines()
    assert any(line.startswith("sha256 model.onnx ") and line.endswith(" KiB 100.0%") for line in progress), \
        "the control plane's own read of the artifact, to hash it"
    assert "canary 1/1 100.0%" in progress and "wave 1 1/1 100.0%" in progress, "piped, a line per stage's tenth"


def test_a_rollout_with_a_format_its_artifact_contradicts_is_refused_before_any_device_is_told(
        mosquitto: Mosquitto, artifact: Path, tmp_path: Path) -> None:
    done = run(*deploy_args(mosquitto, artifact, tmp_path / "rollouts", "ro-wrong"), "--format", "onnx")
    assert done.returncode == 2
    assert "--format onnx, but" in done.stderr and "is a tar archive (a bundle)" in done.stderr, done.stderr
    assert not (tmp_path / "rollouts" / "ro-wrong.json").exists()


class Impostor:
    """A device that answers every deployment it sees with a refused rollback under the same id."""

    def __init__(self, port: int) -> None:
        self.answered: set[str] = set()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="impostor")
        self._client.on_connect = lambda c, *_: c.subscribe("edge/+/deployment", qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        command_id = json.loads(message.payload)["deployment_id"] + ROLLBACK_SUFFIX
        if command_id in self.answered:
            return
        self.answered.add(command_id)
        reply = ReplyPayload(device_id="impostor", ts=time.time(), seq=len(self.answered), id=command_id, ok=False,
                             command="rollback", error=ErrorInfo(code="busy", message="refused by an impostor"))
        client.publish("edge/impostor/reply", encode_payload(reply), qos=1)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_an_abort_ignores_rollback_replies_from_a_device_it_did_not_send_them_to(
        mosquitto: Mosquitto, artifact: Path, tmp_path: Path) -> None:
    rollout_id = rollout_id_failing_in_first_wave(0.3)
    impostor = Impostor(mosquitto.port)
    try:
        with simulated_fleet(mosquitto.port, DEVICES, tmp_path / "sim.log", *FAST, "--fail-rate", "0.3"):
            done = run(*deploy_args(mosquitto, artifact, tmp_path / "rollouts", rollout_id))
            assert done.returncode == 1, done.stdout + done.stderr
            assert versions(mosquitto) == {OLD: DEVICES}
    finally:
        impostor.close()
    saved = record(tmp_path / "rollouts", rollout_id)
    took = saved["waves"][0] + [d for d in saved["waves"][1] if not fails(d, NEW, 0.3)]
    assert {f"{saved['devices'][d]['deployment_id']}{ROLLBACK_SUFFIX}" for d in took} <= impostor.answered
    assert "refused by an impostor" not in done.stdout
    assert sorted(d for d, e in saved["devices"].items() if e["state"] == "reverted") == sorted(took)
