"""Faults, end to end: the real agent as a subprocess, a real mosquitto the test stops and
restarts, the real model and video. Nothing the agent sent is lost and nothing stops serving
when the broker, the agent process, the camera or the disk fails."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from agent.models.store import ModelStore
from tests.support.agentproc import BEHAVIOUR_UNJUDGED, SLOW_MACHINE, AgentProcess, agent_config
from tests.support.faultkit import ArtifactServer, OutboxView, bundle, log_events, payloads_by_seq, short_clip
from tests.support.mosquitto import Mosquitto, MqttProbe, poll
from tests.support.tmpfs import small_tmpfs

pytestmark = pytest.mark.slow

DEVICE = "dev1"
OUTAGES = 5
RECONNECT_MAX_S = 2.0
WAIT_S = 90.0
"""Generous: the machine running the tests is shared and noisy."""
SEQUENCED = ("telemetry/latency", "telemetry/health", "events", "reply")
"""Topic suffixes that pass through the outbox; each counts 1, 2, 3, ..."""
LATENCY = f"edge/{DEVICE}/telemetry/latency"
HEALTH = f"edge/{DEVICE}/telemetry/health"


def body(message: Any) -> dict[str, Any]:
    return json.loads(message.payload if hasattr(message, "payload") else message)


def outbox_of(tmp_path: Path) -> OutboxView:
    return OutboxView(tmp_path / "state" / "outbox.sqlite3")


def frames_in(payloads: list[bytes]) -> list[int]:
    return [body(p)["frames_processed"] for p in payloads]


def queued_frames_rise(outbox: OutboxView, after: float) -> bool:
    """Latency reports made since ``after`` wait in the outbox and show frames still rising."""
    reports = [body(p) for t, p in outbox.messages() if t == LATENCY]
    counts = [r["frames_processed"] for r in reports if r["ts"] >= after]
    return len(counts) >= 3 and counts[-1] > counts[0]


def unaccounted(probe: MqttProbe, outbox: OutboxView) -> dict[str, list[int]]:
    """Per topic, the numbers 1..last that neither arrived nor still wait in the outbox."""
    last = outbox.sequences()
    waiting = outbox.messages()
    missing: dict[str, list[int]] = {}
    for key in SEQUENCED:
        topic = f"edge/{DEVICE}/{key}"
        received = payloads_by_seq(probe.snapshot(topic))
        left = payloads_by_seq([(t, p) for t, p in waiting if t == topic])
        missing[key] = sorted(set(range(1, last.get(key, 0) + 1)) - set(received) - set(left))
    return missing


def assert_every_seq_arrived_once(probe: MqttProbe, outbox: OutboxView) -> None:
    """Every number 1..last of each topic arrived (once, or twice as the same message),
    or still waits in the outbox, or is one of those the drop counter counted."""
    poll(lambda: sum(map(len, unaccounted(probe, outbox).values())) <= outbox.dropped(), WAIT_S,
         "every sequence number to arrive or be accounted for")
    last = outbox.sequences()
    for key in SEQUENCED:
        received = payloads_by_seq(probe.snapshot(f"edge/{DEVICE}/{key}"))
        assert set(received) <= set(range(1, last.get(key, 0) + 1)), f"{key}: unknown numbers"
        for seq, copies in received.items():
            # QoS 1 may deliver twice; a second copy must be the same message, not a new one.
            assert all(c == copies[0] for c in copies), f"{key} seq {seq} arrived with two bodies"


def in_order(probe: MqttProbe, topic: str) -> list[dict[str, Any]]:
    """The payloads of a topic by sequence number, one copy each."""
    return [body(copies[0]) for _, copies in sorted(payloads_by_seq(probe.snapshot(topic)).items())]


def test_five_broker_outages_lose_no_telemetry_and_never_stop_the_frames(tmp_path, demo_dir, mqtt_probe,
                                                                         persistent_broker):
    broker = persistent_broker
    filters = [f"edge/{DEVICE}/telemetry/#", f"edge/{DEVICE}/events", f"edge/{DEVICE}/reply"]
    probe = mqtt_probe(broker.port, filters, persistent=True)
    config = agent_config(tmp_path, demo_dir, broker.url,
                          mqtt={"reconnect_min_s": 0.2, "reconnect_max_s": RECONNECT_MAX_S})
    outbox = outbox_of(tmp_path)
    agent = AgentProcess(config)
    outages: list[tuple[float, float]] = []
    try:
        probe.wait_for(lambda m: m.topic == LATENCY and body(m)["frames_processed"] > 0,
                       timeout=WAIT_S, what="the first processed frames")
        for n in range(OUTAGES):
            broker.stop()  # SIGTERM: mosquitto saves the probe's session and queue
            down = time.time()
            poll(lambda since=down: queued_frames_rise(outbox, since), WAIT_S,
                 f"frames to keep rising in the reports queued during outage {n + 1}")
            broker.start()
            up = time.time()
            outages.append((down, up))
            poll(lambda count=n + 2: len(log_events(agent.log(), "mqtt_connected")) >= count,
                 WAIT_S, f"reconnection {n + 1}")
            probe.wait_for(lambda m, count=n + 1: m.topic == HEALTH
                           and body(m)["broker"]["reconnects"] == count,
                           timeout=WAIT_S, what=f"health counting reconnect {n + 1}")
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    assert_every_seq_arrived_once(probe, outbox)
    assert outbox.dropped() == 0

    # Frames: never fall, and rise across each outage, in the order the reports were made.
    reports = in_order(probe, LATENCY)
    counts = [r["frames_processed"] for r in reports]
    assert counts == sorted(counts)
    for down, up in outages:
        during = [r["frames_processed"] for r in reports if down <= r["ts"] <= up]
        before = [r["frames_processed"] for r in reports if r["ts"] < down]
        after = [r["frames_processed"] for r in reports if r["ts"] > up]
        assert len(during) >= 3 and during[-1] > during[0] >= before[-1]
        assert after[0] >= during[-1]

    # Reconnects: each one scheduled within the cap, and the health payload counted them all.
    events = log_events(agent.log())
    delays = [e["delay_s"] for e in events if e["event"] == "mqtt_retry_scheduled"]
    assert delays and max(delays) <= RECONNECT_MAX_S
    assert sum(e["event"] == "mqtt_connected" for e in events) == OUTAGES + 1
    health = in_order(probe, HEALTH)
    assert health[-1]["broker"]["reconnects"] == OUTAGES
    states = {h["broker"]["state"] for h in health}
    assert "connected" in states and states & {"backing_off", "connecting", "disconnected"}


# --- the agent process dies ------------------------------------------------------------------


def start_agent(config: Path, run: int) -> AgentProcess:
    return AgentProcess(config, log_path=config.with_name(f"agent-{run}.log"))


def test_agent_killed_with_telemetry_queued_keeps_it_and_continues_the_numbers(
    tmp_path, demo_dir, mqtt_probe, persistent_broker
):
    broker = persistent_broker
    probe = mqtt_probe(broker.port, [f"edge/{DEVICE}/telemetry/#", f"edge/{DEVICE}/events",
                                     f"edge/{DEVICE}/reply"], persistent=True)
    config = agent_config(tmp_path, demo_dir, broker.url)
    outbox = outbox_of(tmp_path)
    first = start_agent(config, 1)
    try:
        probe.wait_for(lambda m: m.topic == LATENCY, timeout=WAIT_S, what="the first latency report")
        broker.stop()
        poll(lambda: outbox.count(LATENCY) >= 3 and outbox.count(HEALTH) >= 1, WAIT_S,
             "telemetry queued while the broker is down")
    finally:
        first.kill()  # SIGKILL: no flush, no clean close of the database
    kept = outbox.messages()
    numbers_before = outbox.sequences()
    second = start_agent(config, 2)
    try:
        poll(lambda: outbox.count(LATENCY) > len([m for m in kept if m[0] == LATENCY]), WAIT_S,
             "the restarted agent to queue behind what was kept")
        assert outbox.messages()[:len(kept)] == kept
        restarted = [body(p) for t, p in outbox.messages()[len(kept):] if t == LATENCY]
        assert restarted[0]["seq"] == numbers_before["telemetry/latency"] + 1
        broker.start()
        for topic, payload in kept:
            probe.wait_for(lambda m: m.topic == topic and m.payload == payload,  # noqa: B023
                           timeout=WAIT_S, what=f"kept message {payload[:60]!r}")
        probe.wait_for(lambda m: m.topic == HEALTH and body(m)["model"]["version"] == "v4"
                       and body(m)["ts"] > time.time() - 60 and body(m)["frames_processed"] > 0,
                       timeout=WAIT_S, what="health of the restarted agent serving v4")
    finally:
        code = second.terminate()
    assert code == 0, second.log()[-3000:]
    assert_every_seq_arrived_once(probe, outbox)


DEPLOY_ID = "deploy-v6"


def deploy_command(server: ArtifactServer, sha256: str, command_id: str = DEPLOY_ID) -> bytes:
    return json.dumps({
        "id": command_id, "name": "text-det", "version": "v6", "url": server.url("v6.tar"),
        "sha256": sha256, "format": "bundle",
        "probation": {"window_s": 2.0, "max_error_rate": 1.0, "max_latency_ratio": 1000.0},
    }).encode()


def latest(probe: MqttProbe, topic: str, since: float) -> dict[str, Any] | None:
    found = [body(m) for m in probe.snapshot(topic) if body(m)["ts"] >= since]
    return found[-1] if found else None


def serving_after(probe: MqttProbe, since: float) -> dict[str, Any]:
    """The model a restarted agent serves, once it also reports frames processed."""
    probe.wait_for(lambda m: m.topic == LATENCY and body(m)["ts"] >= since
                   and body(m)["frames_processed"] > 0, timeout=WAIT_S,
                   what="frames processed after the restart")
    model = probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/model" and body(m)["ts"] >= since,
                           timeout=WAIT_S, what="the model topic after the restart")
    return body(model)


def assert_store_is_whole(store_root: Path) -> ModelStore:
    """Nothing half-written: no scratch files, no temporary folders, every version verifies."""
    store = ModelStore(store_root)
    work = store_root / ".work"
    assert not work.exists() or list(work.iterdir()) == []
    assert not [p for p in (store_root / "text-det").iterdir() if p.name.startswith(".tmp-")]
    for version in store.versions("text-det"):
        installed = store.get("text-det", version)
        installed.manifest.verify_files(installed.path)
    return store


@pytest.mark.parametrize("when", ["downloading", "warming", "after_swap"])
def test_agent_killed_during_a_deployment_restarts_serving_a_valid_model(
    tmp_path, demo_dir, mosquitto, mqtt_probe, when
):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    _, sha256 = bundle(demo_dir / "models" / "text-det-v6", artifacts / "v6.tar")
    server = ArtifactServer(artifacts, chunk_delay_s=0.05 if when == "downloading" else 0.0)
    probe = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/#"])
    config = agent_config(tmp_path, demo_dir, mosquitto.url, deploy={**SLOW_MACHINE, **BEHAVIOUR_UNJUDGED})
    store_root = tmp_path / "engines"
    first = start_agent(config, 1)
    try:
        probe.wait_for(lambda m: m.topic == LATENCY, timeout=WAIT_S, what="the agent to serve")
        probe.publish(f"edge/{DEVICE}/cmd/deploy", deploy_command(server, sha256))
        if when == "downloading":
            poll(lambda: server.sent > 1_000_000, WAIT_S, "the download to be under way")
        elif when == "warming":
            probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/deployment"
                           and body(m)["state"] == "warming", timeout=WAIT_S, what="warming")
        else:
            probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/model" and body(m)["version"] == "v6",
                           timeout=WAIT_S, what="the swap to v6")
    finally:
        first.kill()
    if when == "downloading":
        assert list((store_root / ".work").rglob(".download-*")), "the kill came mid-download"
    restart = time.time()
    second = start_agent(config, 2)
    try:
        model = serving_after(probe, restart)
        expected = "v6" if when == "after_swap" else "v4"
        assert model["version"] == expected
        store = assert_store_is_whole(store_root)
        assert store.current_version("text-det") == expected
        # Asked again, the cut-off deploy is answered from the journal, not redone: as
        # interrupted, or (killed after the swap) possibly with the answer it had already.
        probe.publish(f"edge/{DEVICE}/cmd/deploy", deploy_command(server, sha256))
        reply = body(probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/reply"
                                    and body(m)["ts"] >= restart,
                                    timeout=WAIT_S, what="the answer to the repeated deploy"))
        assert reply["id"] == DEPLOY_ID
        if when == "after_swap" and reply["ok"]:
            assert reply["result"]["version"] == "v6"
        else:
            assert reply["error"]["code"] == "interrupted"
        if when == "downloading":  # nothing is stuck: a new deployment goes through
            server.chunk_delay_s = 0.0
            probe.publish(f"edge/{DEVICE}/cmd/deploy", deploy_command(server, sha256, "deploy-again"))
            probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/deployment"
                           and body(m)["deployment_id"] == "deploy-again"
                           and body(m)["state"] == "committed", timeout=WAIT_S, what="the redeploy")
            assert_store_is_whole(store_root)
    finally:
        code = second.terminate()
        server.close()
    assert code == 0, second.log()[-3000:]


# --- the camera and the disk -----------------------------------------------------------------


def test_video_source_removed_and_restored_is_reported_and_comes_back(tmp_path, demo_dir, mosquitto,
                                                                       mqtt_probe):
    camera = short_clip(demo_dir / "video.mp4", tmp_path / "camera.mp4", frames=30)
    saved = tmp_path / "camera-saved.mp4"
    shutil.copy(camera, saved)
    probe = mqtt_probe(mosquitto.port, [HEALTH])
    config = agent_config(tmp_path, demo_dir, mosquitto.url,
                          source={"uri": str(camera), "reopen_min_s": 0.2, "reopen_max_s": 1.0})
    agent = start_agent(config, 1)
    try:
        probe.wait_for(lambda m: body(m)["camera"]["state"] == "open", timeout=WAIT_S, what="open")
        camera.unlink()
        removed = time.time()
        down = body(probe.wait_for(lambda m: body(m)["ts"] > removed
                                   and body(m)["camera"]["state"] == "reconnecting",
                                   timeout=WAIT_S, what="the camera reported reconnecting"))
        assert "camera.mp4" in (down["camera"]["last_error"] or "")
        shutil.copy(saved, camera)
        restored = time.time()
        back = body(probe.wait_for(lambda m: body(m)["ts"] > restored
                                   and body(m)["camera"]["state"] == "open",
                                   timeout=WAIT_S, what="the camera open again"))
        assert back["camera"]["reopens"] >= 1
        probe.wait_for(lambda m: body(m)["ts"] > back["ts"]
                       and body(m)["frames_processed"] > back["frames_processed"],
                       timeout=WAIT_S, what="frames processed again")
        assert agent.proc.poll() is None
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]


def test_disk_full_during_a_download_is_reported_and_the_old_model_serves(tmp_path, demo_dir,
                                                                          mosquitto, mqtt_probe):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    _, sha256 = bundle(demo_dir / "models" / "text-det-v6", artifacts / "v6.tar")
    server = ArtifactServer(artifacts)
    probe = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/#"])
    with small_tmpfs(tmp_path / "engines", 8) as store_root:
        ModelStore(store_root).install(demo_dir / "models" / "text-det-v4")  # 4.6 MB of the 8
        config = agent_config(tmp_path, demo_dir, mosquitto.url, deploy={**SLOW_MACHINE, **BEHAVIOUR_UNJUDGED})
        free_before = shutil.disk_usage(store_root).free
        assert free_before < (artifacts / "v6.tar").stat().st_size
        agent = start_agent(config, 1)
        try:
            probe.wait_for(lambda m: m.topic == LATENCY, timeout=WAIT_S, what="the agent to serve")
            probe.publish(f"edge/{DEVICE}/cmd/deploy", deploy_command(server, sha256))
            failed = body(probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/deployment"
                                         and body(m)["state"] == "failed",
                                         timeout=WAIT_S, what="the deployment to fail"))
            assert failed["error"]["code"] == "disk_full"
            assert "space" in failed["error"]["message"].lower()
            reply = body(probe.wait_for(lambda m: m.topic == f"edge/{DEVICE}/reply",
                                        timeout=WAIT_S, what="the deploy reply"))
            assert (reply["id"], reply["ok"], reply["error"]["code"]) == (DEPLOY_ID, False, "disk_full")
            after = probe.wait_for(lambda m: m.topic == LATENCY and body(m)["ts"] > failed["ts"],
                                   timeout=WAIT_S, what="a report after the failure")
            probe.wait_for(lambda m: m.topic == LATENCY
                           and body(m)["frames_processed"] > body(after)["frames_processed"],
                           timeout=WAIT_S, what="frames still processed")
            health = probe.wait_for(lambda m: m.topic == HEALTH and body(m)["ts"] > failed["ts"],
                                    timeout=WAIT_S, what="health after the failure")
            assert body(health)["model"]["version"] == "v4"
            store = assert_store_is_whole(store_root)
            assert store.versions("text-det") == ["v4"]
            assert shutil.disk_usage(store_root).free >= free_before - 64 * 1024
        finally:
            code = agent.terminate()
            server.close()
    assert code == 0, agent.log()[-3000:]


# --- the broker: killed without persistence, refusing the credentials -----------------------


def test_broker_killed_outright_gets_back_subscriptions_and_retained_state(tmp_path, demo_dir,
                                                                           mosquitto, mqtt_probe):
    config = agent_config(tmp_path, demo_dir, mosquitto.url)
    agent = start_agent(config, 1)
    try:
        watcher = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/status"])
        watcher.wait_for(lambda m: body(m)["state"] == "online", timeout=WAIT_S, what="online")
        mosquitto.kill()  # SIGKILL, no persistence: retained state and subscriptions are gone
        mosquitto.restart()
        poll(lambda: len(log_events(agent.log(), "mqtt_connected")) >= 2, WAIT_S, "the reconnection")
        fresh = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/status", f"edge/{DEVICE}/model",
                                            f"edge/{DEVICE}/reply"])
        fresh.wait_for(lambda m: m.topic.endswith("/model"), timeout=WAIT_S,
                       what="the model, published again after the reconnect")
        fresh.wait_for(lambda m: m.topic.endswith("/status"), timeout=WAIT_S,
                       what="the status, published again after the reconnect (after the model)")
        # The broker holds them retained again: a subscriber that comes later gets them.
        late = mqtt_probe(mosquitto.port, [f"edge/{DEVICE}/status", f"edge/{DEVICE}/model"])
        status = late.wait_for(lambda m: m.topic.endswith("/status") and m.retain, timeout=WAIT_S,
                               what="the retained status")
        assert body(status)["state"] == "online"
        model = late.wait_for(lambda m: m.topic.endswith("/model") and m.retain, timeout=WAIT_S,
                              what="the retained model")
        assert body(model)["version"] == "v4"
        fresh.publish(f"edge/{DEVICE}/cmd/ping", b'{"id": "after-kill"}')
        reply = fresh.wait_for(lambda m: m.topic.endswith("/reply"), timeout=WAIT_S,
                               what="a reply: the agent subscribed again")
        assert (body(reply)["id"], body(reply)["ok"]) == ("after-kill", True)
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]


def test_broker_refusing_the_credentials_is_reported_as_refused_until_they_are_fixed(
    tmp_path, demo_dir, mqtt_probe
):
    broker = Mosquitto(tmp_path / "auth", users={DEVICE: "right-password", "watcher": "w"})
    broker.start()
    password = tmp_path / "mqtt-password"
    password.write_text("wrong-password\n")
    probe = mqtt_probe(broker.port, [HEALTH, f"edge/{DEVICE}/status"], username="watcher",
                       password="w")
    config = agent_config(tmp_path, demo_dir, broker.url,
                          mqtt={"username": DEVICE, "password_file": str(password)})
    agent = start_agent(config, 1)
    try:
        poll(lambda: len(log_events(agent.log(), "mqtt_refused")) >= 2, WAIT_S, "refused attempts")
        poll(lambda: outbox_of(tmp_path).count(HEALTH) >= 2, WAIT_S, "health queued while refused")
        assert probe.snapshot() == []  # never online, nothing published
        assert not log_events(agent.log(), "mqtt_connected")
        password.write_text("right-password\n")  # read again at the next attempt
        probe.wait_for(lambda m: m.topic.endswith("/status") and body(m)["state"] == "online",
                       timeout=WAIT_S, what="online once the password is right")
        probe.wait_for(lambda m: m.topic == HEALTH and body(m)["broker"]["state"] == "connected",
                       timeout=WAIT_S, what="health reporting connected")
        # What was made while refused was kept and arrives now, in order, saying so.
        states = [h["broker"]["state"] for h in in_order(probe, HEALTH)]
        first_connected = states.index("connected")
        assert "refused" in states[:first_connected]
        assert set(states[:first_connected]) <= {"refused", "connecting", "disconnected"}
    finally:
        code = agent.terminate()
        broker.kill()
    assert code == 0, agent.log()[-3000:]
    refused = log_events(agent.log(), "mqtt_refused")[0]
    assert refused["level"] == "error" and "reason" in refused
