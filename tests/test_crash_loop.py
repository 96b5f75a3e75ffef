"""Crash loops: a value that would crash the agent at every start is refused at the door, and
whatever else crashes it at start-up, the version it serves is quarantined after K tries.

The agent runs as systemd runs it (the real CLI, ``$NOTIFY_SOCKET``, restarted after every
abnormal exit like ``Restart=on-failure``), on a real mosquitto, with the demo models.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from agent.models.bootguard import CRASH_TEST_ENV
from agent.models.store import ModelStore
from tests.agentproc import WAIT_S, AgentProcess, NotifyListener, agent_config

pytestmark = pytest.mark.slow

NAME = "text-det"
STARTS = 3
"""``crash_loop_starts`` for these tests."""
POLL_S = 0.2
"""How often the restart loop looks at the process and the notify socket."""


def _store_with_a_copy_as(store_root: Path, demo: Path, version: str) -> None:
    """v4 installed as previous, and a byte-identical copy of it made current as ``version``,
    written past the store's checks as an old agent (or a hand edit) would have left it."""
    store = ModelStore(store_root)
    store.install(demo / "models" / "text-det-v4")
    model_dir = store_root / NAME
    copy = model_dir / version
    shutil.copytree(model_dir / "v4", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = version
    (copy / "manifest.json").write_text(json.dumps(manifest))
    os.symlink("v4", model_dir / ".tmp-previous")
    os.replace(model_dir / ".tmp-previous", model_dir / "previous")
    os.symlink(version, model_dir / ".tmp-current")
    os.replace(model_dir / ".tmp-current", model_dir / "current")


def test_a_current_version_ending_in_a_newline_is_refused_and_previous_is_served(
        tmp_path, demo_dir, mosquitto):
    _store_with_a_copy_as(tmp_path / "engines", demo_dir, "v5\n")
    config = agent_config(tmp_path, demo_dir, mosquitto.url)
    notify = NotifyListener(tmp_path / "notify.sock")
    agent = AgentProcess(config, notify=notify.path)
    try:
        notify.wait_for("READY=1")
        # The watchdog's periodic STATUS line is where the newline used to abort the process.
        notify.wait_for("WATCHDOG=1")
        assert any(line.startswith("STATUS=serving text-det v4 at")
                   for m in notify.drain() for line in m.splitlines())
        assert agent.proc.poll() is None, agent.log()
    finally:
        code = agent.terminate()
        notify.close()
    assert code == 0, agent.log()
    assert "fell_back_to_previous" in agent.log()
    assert os.readlink(tmp_path / "engines" / NAME / "current") == "v4"


def _until_ready_or_exit(agent: AgentProcess, notify: NotifyListener) -> int | None:
    """What systemd sees of one start: READY=1 (``None``) or the exit status, whichever first."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any("READY=1" in m.splitlines() for m in notify.drain()):
            return None
        code = agent.proc.poll()
        if code is not None:
            return code
        time.sleep(POLL_S)
    raise AssertionError(f"neither READY=1 nor an exit in {WAIT_S}s:\n{agent.log()}")


def test_a_version_that_aborts_every_start_is_quarantined_after_k_starts_and_previous_is_served(
        tmp_path, demo_dir, mosquitto, mqtt_probe):
    store = ModelStore(tmp_path / "engines")
    store.install(demo_dir / "models" / "text-det-v4")
    store.install(demo_dir / "models" / "text-det-v6")
    config = agent_config(tmp_path, demo_dir, mosquitto.url,
                          agent={"crash_loop_starts": STARTS, "crash_loop_window_s": 600.0})
    probe = mqtt_probe(mosquitto.port, ["edge/dev1/#"])
    notify = NotifyListener(tmp_path / "notify.sock")
    fault = {CRASH_TEST_ENV: "v6"}
    outcomes: list[int | None] = []
    # systemd's Restart=on-failure: start again after every abnormal exit, until READY.
    while True:
        notify.messages.clear()
        agent = AgentProcess(config, notify=notify.path, env=fault,
                             log_path=tmp_path / f"agent-{len(outcomes)}.log")
        outcome = _until_ready_or_exit(agent, notify)
        outcomes.append(outcome)
        if outcome is None or len(outcomes) > STARTS + 1:
            break
        agent.terminate()
    try:
        assert outcomes == [-signal.SIGABRT] * STARTS + [None], agent.log()
        notify.wait_for("WATCHDOG=1")
        assert any(line.startswith("STATUS=serving text-det v4")
                   for m in notify.drain() for line in m.splitlines())

        def crash_loop(m) -> bool:
            return m.topic == "edge/dev1/deployment" and (json.loads(m.payload).get("error") or {}).get(
                "code") == "crash_loop"

        deployment = json.loads(probe.wait_for(crash_loop, what="the crash_loop deployment").payload)
        assert (deployment["version"], deployment["state"]) == ("v6", "rolled_back")
        assert f"failed {STARTS} starts in a row" in deployment["error"]["message"]
        assert "serving v4" in deployment["error"]["message"]
        event = json.loads(probe.wait_for(
            lambda m: m.topic == "edge/dev1/events" and json.loads(m.payload)["kind"] == "deployment_rolled_back",
            what="the rolled-back event").payload)
        assert event["data"]["error"]["code"] == "crash_loop"
        assert event["data"]["failures"] == STARTS
        fresh = mqtt_probe(mosquitto.port, ["edge/dev1/deployment"])
        assert crash_loop(fresh.wait_for(lambda m: m.retain, what="the retained deployment"))
        assert store.current_version(NAME) == "v4"
        assert "v6" in store.quarantined(NAME)
    finally:
        code = agent.terminate()
        notify.close()
    assert code == 0, agent.log()
    record = json.loads((tmp_path / "state" / "boot.json").read_text())
    assert (record["version"], record["state"], record["failures"]) == ("v4", "stopped", 0)
