"""A second terminal talks to the local agent with ``--config``: no broker address or password to copy.

The agent runs in a real terminal (tmux) with its embedded broker, as ``make run``
starts it: its start-up ends with a summary for a person; then the control-plane
commands find it from its config file alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.mqtt.broker import CONNECTION_FILE, PASSWORD_FILE
from agent.wire import DeploymentState
from tests.support.agentproc import REPO, SLOW_MACHINE, agent_config
from tests.support.mosquitto import WAIT_S, free_port, poll
from tests.support.tmux import Tmux

CLI_TIMEOUT_S = 120
AGENT_START_S = 90.0
V6 = "models/text-det-v6/model.onnx"


def edge_agent(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _config(tmp_path: Path, demo_dir: Path) -> Path:
    # Probation must not roll v6 back for being slower than v4 on a loaded machine before the test's own
    # rollback (a loaded run's rollback then went from v4 back to v6): the test is about the CLI, not the bound.
    return agent_config(tmp_path, demo_dir, "embedded", telemetry={"health_period_s": 10.0},
                        deploy={"file_roots": [str(demo_dir / "models")], "max_latency_ratio": 100.0,
                                **SLOW_MACHINE})


def test_commands_with_config_reach_the_agent_the_terminal_summary_names(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir)
    state = tmp_path / "state"
    terminal = Tmux(width=200, height=50)
    rc = tmp_path / "agent.rc"
    try:
        terminal.run("agent", [sys.executable, "-m", "agent", "run", "--config", str(config)], REPO, rc,
                     env={"PYTHONPATH": str(REPO)})
        screen = terminal.wait_for("agent", "edge-agent is running (Ctrl-C stops it)", history=True,
                                   timeout=AGENT_START_S)
        url = json.loads((state / CONNECTION_FILE).read_text())["url"]
        summary = screen[screen.index("edge-agent is running"):]
        for shown in ("device  dev1", "camera  camera0: " + str(demo_dir / "video.mp4"), "model   text-det v4",
                      f"broker  {url}", str(state / PASSWORD_FILE), f"top --config {config}",
                      f"status --config {config}"):
            assert shown in summary, f"{shown!r} not in the summary:\n{summary}"

        ping = edge_agent("ping", "--config", str(config), "--timeout", "60")
        assert ping.returncode == 0, ping.stderr
        assert json.loads(ping.stdout)["ok"] is True

        # An older deployment's retained state, failed, is what the deploy topic holds first...
        missing = (demo_dir / "models" / "missing.onnx").as_uri()
        failed = edge_agent("deploy", "--config", str(config), "--name", "text-det", "--version", "v5",
                            "--url", missing, "--sha256", "0" * 64, "--format", "onnx", "--timeout", "60")
        assert failed.returncode == 1, failed.stderr
        assert "[dev1] deploy refused: unreachable" in failed.stderr

        # ...and a deploy follows only its own id. No --format: the CLI sees an ONNX model.
        deployed = edge_agent("deploy", "--config", str(config), "--name", "text-det", "--version", "v6",
                              "--url", (demo_dir / V6).as_uri(), "--timeout", "120")
        assert deployed.returncode == 0, deployed.stderr
        reply = json.loads(deployed.stdout)
        assert reply["ok"] is True and reply["result"]["version"] == "v6"
        progress = [line for line in deployed.stderr.splitlines() if line.startswith("[dev1] ")]
        assert progress[-1] == f"[dev1] now serving text-det v6 (deployment {reply['id']}, on probation)"
        states = [line.split()[1] for line in progress[:-1]]
        assert "failed" not in states and "active" in states, deployed.stderr
        # The first line is a step before serving (a file:// download can be done before the CLI's
        # subscription sees it, so it may start at verifying).
        steps = [state.value for state in DeploymentState]
        assert states[0] in steps[:steps.index("active")], "a plain line per state change, piped"

        back = edge_agent("rollback", "--config", str(config), "--timeout", "60")
        assert back.returncode == 0, back.stderr
        assert "[dev1] rolled back: now serving text-det v4" in back.stderr
    finally:
        if not rc.exists():
            terminal.keys("agent", "C-c")
            poll(rc.exists, WAIT_S, "the agent to stop on Ctrl-C")
        log = terminal.screen("agent", history=True)
        terminal.close()
    assert rc.read_text().strip() == "0", log[-3000:]
    assert not (state / CONNECTION_FILE).exists()
    gone = edge_agent("ping", "--config", str(config), "--timeout", "5")
    assert gone.returncode == 1
    assert "no agent is running with this config" in gone.stderr and str(state / CONNECTION_FILE) in gone.stderr


def test_no_agent_running_is_said_with_the_file_it_looked_for(tmp_path, demo_dir, capsys):
    config = _config(tmp_path, demo_dir)
    with pytest.raises(SystemExit) as exited:
        main(["status", "--config", str(config)])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert "no agent is running with this config" in error
    assert str(tmp_path / "state" / CONNECTION_FILE) in error and "make run" in error


def test_a_connection_file_left_by_a_killed_agent_is_called_stale(tmp_path, demo_dir, capsys):
    config = _config(tmp_path, demo_dir)
    state = tmp_path / "state"
    state.mkdir()
    (state / PASSWORD_FILE).write_text("old\n")
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    (state / CONNECTION_FILE).write_text(json.dumps(
        {"url": url, "username": "edge-agent", "password_file": str(state / PASSWORD_FILE)}))
    with pytest.raises(SystemExit) as exited:
        main(["ping", "--config", str(config), "--timeout", "5"])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(state / CONNECTION_FILE))} is stale: its broker {url} does not answer", error)


def test_a_command_names_the_two_ways_to_reach_an_agent(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["ping"])
    assert exited.value.code == 2
    assert "--config CONFIG (the agent's config file), or --broker URL with --device ID" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["ping", "--config", "config.toml", "--broker", "mqtt://127.0.0.1:1883"])
    assert exited.value.code == 2
    assert "leave out --broker" in capsys.readouterr().err


def test_a_silent_device_is_explained_by_its_retained_status(mosquitto, mqtt_probe, capsys):
    probe = mqtt_probe(mosquitto.port, [])
    probe.publish("edge/gone/status", json.dumps(
        {"schema_version": 1, "device_id": "gone", "ts": 1.0, "seq": 0, "state": "lost",
         "agent_version": "0.1.0", "started_at": 0.0, "groups": []}).encode(), retain=True)
    with pytest.raises(SystemExit):
        main(["ping", "--broker", mosquitto.url, "--device", "gone", "--timeout", "1"])
    assert "device 'gone' is lost since" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ping", "--broker", mosquitto.url, "--device", "nobody", "--timeout", "1"])
    assert "the broker holds no status of device 'nobody': is that its id?" in capsys.readouterr().err


def test_a_config_with_its_own_broker_gives_its_url_user_and_password(tmp_path, demo_dir):
    from agent.core.config import load_config
    from agent.fleet.local import LocalAgentError, local_target

    (tmp_path / "password").write_text("s3cret\n")
    config = agent_config(tmp_path, demo_dir, "mqtt://broker.lan:1884", device_id="cam-7",
                          mqtt={"username": "cam-7", "password_file": str(tmp_path / "password"), "prefix": "site"})
    target = local_target(load_config(config), config)
    assert (target.url, target.username, target.password, target.prefix, target.device_id) == (
        "mqtt://broker.lan:1884", "cam-7", "s3cret", "site", "cam-7")
    tls = agent_config(tmp_path, demo_dir, "mqtts://broker.lan", mqtt={"ca_file": str(tmp_path / "no-ca.pem")})
    with pytest.raises(LocalAgentError, match=r"\[mqtt\] ca_file .*no-ca.pem: no such file"):
        local_target(load_config(tls), tls)


def test_the_summary_names_the_command_as_it_was_typed(tmp_path):
    from agent.cli.summary import command_name

    script = tmp_path / ".venv" / "bin" / "edge-agent"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    assert command_name(str(script), cwd=tmp_path) == ".venv/bin/edge-agent"
    assert command_name(str(tmp_path / "agent" / "__main__.py"), cwd=Path("/nowhere")) == f"{sys.executable} -m agent"
