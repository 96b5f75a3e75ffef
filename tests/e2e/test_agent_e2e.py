"""The agent end to end: the real CLI as a subprocess, a real mosquitto, the real model and video."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.agentproc import REPO, WAIT_S, AgentProcess, NotifyListener, agent_config, write_config

pytestmark = pytest.mark.slow


def _json(message):
    return json.loads(message.payload)


def test_agent_comes_online_reports_telemetry_is_ready_and_stops_offline(tmp_path, demo_dir, mosquitto, mqtt_probe):
    config = agent_config(tmp_path, demo_dir, mosquitto.url)
    probe = mqtt_probe(mosquitto.port, ["edge/dev1/#"])
    notify = NotifyListener(tmp_path / "notify.sock")
    agent = AgentProcess(config, notify=notify.path)
    try:
        notify.wait_for("READY=1")
        online = probe.wait_for(lambda m: m.topic == "edge/dev1/status" and _json(m)["state"] == "online",
                                what="retained online status")
        assert online.qos == 1
        model = _json(probe.wait_for(lambda m: m.topic == "edge/dev1/model", what="the model topic"))
        assert (model["name"], model["version"], model["runtime"]) == ("text-det", "v4", "onnxruntime")
        assert len(model["sha256"]) == 64

        def processed(m):
            return m.topic == "edge/dev1/telemetry/latency" and _json(m)["frames_processed"]

        first = _json(probe.wait_for(lambda m: processed(m) and _json(m)["frames_processed"] > 0))
        later = _json(probe.wait_for(
            lambda m: processed(m) and _json(m)["frames_processed"] > first["frames_processed"] + 5,
            what="a rising processed-frame count"))
        assert later["seq"] > first["seq"]
        for stage in ("preprocess", "infer", "postprocess", "end_to_end"):
            stats = later["stages"][stage]
            assert 0 <= stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert later["fps"] > 0
        health = _json(probe.wait_for(lambda m: m.topic == "edge/dev1/telemetry/health", what="health"))
        assert health["camera"]["state"] == "open"
        assert health["broker"]["state"] == "connected"
        assert health["model"]["version"] == "v4"
        notify.wait_for("WATCHDOG=1")
        assert any(m.startswith("STATUS=serving text-det v4") for m in notify.drain())
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()
    assert "STOPPING=1" in notify.drain()
    offline = probe.wait_for(lambda m: m.topic == "edge/dev1/status" and _json(m)["state"] == "offline",
                             what="offline status after SIGTERM")
    # A fresh subscriber sees the retained offline, not a will.
    fresh = mqtt_probe(mosquitto.port, ["edge/dev1/status"])
    assert _json(fresh.wait_for(lambda m: m.retain, what="retained status"))["state"] == "offline"
    assert offline.payload
    events = [json.loads(line) for line in agent.log().splitlines() if line.startswith("{")]
    assert events, "logs are JSON lines when stderr is not a TTY"
    assert all("event" in e and e.get("device_id") == "dev1"
               for e in events if e.get("logger", "").startswith("agent.device.daemon"))
    notify.close()


def test_killed_agent_leaves_lost_as_last_will(tmp_path, demo_dir, mosquitto, mqtt_probe):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id="dev2",
                          mqtt={"keepalive_s": 5})
    probe = mqtt_probe(mosquitto.port, ["edge/dev2/status"])
    agent = AgentProcess(config)
    try:
        # A start's bound, not the probe's 30 s: a loaded parallel run took longer than that to come online.
        probe.wait_for(lambda m: _json(m)["state"] == "online", timeout=WAIT_S, what="online")
    finally:
        agent.kill()
    probe.wait_for(lambda m: _json(m)["state"] == "lost", timeout=60, what="the lost will")


def test_check_config_names_the_bad_key(tmp_path):
    bad = write_config(tmp_path / "bad.toml", {"mqtt": {"url": "embedded", "qos_level": 2}})
    result = subprocess.run([sys.executable, "-m", "agent", "check-config", str(bad)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "mqtt.qos_level: unknown key" in result.stderr


def test_run_with_a_bad_config_refuses_to_start_with_the_same_message(tmp_path):
    bad = write_config(tmp_path / "bad.toml", {"model": {"threads": 0}})
    result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(bad)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "model.threads: Input should be greater than or equal to 1" in result.stderr


def test_check_config_accepts_the_shipped_config():
    result = subprocess.run([sys.executable, "-m", "agent", "check-config", str(REPO / "config.toml")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_agent_without_a_loadable_model_refuses_to_start(tmp_path, demo_dir, mosquitto):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, model={"name": "nothing-here"})
    result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert "no loadable version of model 'nothing-here'" in result.stderr


def test_drift_bias_and_leak_telemetry_leave_the_agent_through_the_egress_guard(tmp_path, demo_dir, mosquitto,
                                                                                  mqtt_probe):
    config = agent_config(tmp_path, demo_dir, mosquitto.url, device_id="dev-signals",
                          monitor={"drift_period_s": 1.0, "bias_period_s": 1.0, "leak_period_s": 1.0,
                                   "leak_sample_period_s": 0.5, "drift_min_samples": 5, "bias_min_samples": 5})
    probe = mqtt_probe(mosquitto.port, ["edge/dev-signals/telemetry/#", "edge/dev-signals/reply"])
    agent = AgentProcess(config)
    try:
        drift = _json(probe.wait_for(lambda m: m.topic.endswith("/drift") and _json(m)["samples"] >= 5,
                                     what="drift telemetry"))
        # The demo model ships no reference statistics: drift says so instead of guessing.
        assert {m["state"] for m in drift["metrics"].values()} == {"no_reference"}
        bias = _json(probe.wait_for(lambda m: m.topic.endswith("/bias") and _json(m)["samples"] >= 5,
                                    what="bias telemetry"))
        assert "brightness" in bias["slicings"]
        leak = _json(probe.wait_for(lambda m: m.topic.endswith("/leak"), what="leak telemetry"))
        assert leak["resources"]["rss"]["value"] > 0
        assert leak["egress"]["checked"] > 0 and leak["egress"]["blocked"] == 0
        probe.publish("edge/dev-signals/cmd/status", b'{"id": "st"}')
        status = _json(probe.wait_for(lambda m: m.topic.endswith("/reply"), what="status reply"))
        frame_id = status["result"]["last_frame_id"]
        probe.publish("edge/dev-signals/cmd/feedback",
                      json.dumps({"id": "fb", "items": [{"frame_id": frame_id, "positive": True}]}).encode())
        reply = _json(probe.wait_for(lambda m: m.topic.endswith("/reply") and _json(m)["id"] == "fb",
                                     what="feedback reply"))
        assert reply["ok"] and reply["result"]["matched"] + reply["result"]["unmatched"] == 1
    finally:
        assert agent.terminate() == 0


def test_schema_command_prints_every_payload_including_the_signals():
    result = subprocess.run([sys.executable, "-m", "agent", "schema"], capture_output=True, text=True, cwd=REPO)
    schemas = json.loads(result.stdout)
    for name in ("status", "telemetry/latency", "telemetry/drift", "telemetry/bias", "telemetry/leak", "cmd/feedback"):
        assert name in schemas, name


def test_check_config_names_the_camera_and_key_that_is_wrong(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[camera]]\nname = "door"\nuri = "demo/video.mp4"\n\n'
                   '[[camera]]\nname = "yard"\nuri = "ftp://cam-2/stream"\n')
    result = subprocess.run([sys.executable, "-m", "agent", "check-config", str(bad)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "camera[1] (yard).uri: " in result.stderr and "scheme 'ftp'" in result.stderr
