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
from tests.support.agentproc import WAIT_S, AgentProcess, NotifyListener, agent_config

pytestmark = pytest.mark.slow

NAME = "text-det"
STARTS = 3
"""``crash_loop_starts`` for these tests."""
POLL_S = 0.2
"""How often the restart loop looks at the process and the notify socket."""


def _wait_for_status(notify: NotifyListener, prefix: str) -> None:
    """A ``STATUS=`` line starting with ``prefix`` arrives (it follows READY=1 or WATCHDOG=1)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(line.startswith(f"STATUS={prefix}") for m in notify.drain() for line in m.splitlines()):
            return
        time.sleep(POLL_S)
    raise AssertionError(f"no STATUS={prefix}... in {WAIT_S}s; got {notify.messages}")


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
        _wait_for_status(notify, "serving text-det v4 at")
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
        _wait_for_status(notify, "serving text-det v4")

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


def test_kills_soon_after_ready_count_as_failed_starts_and_a_clean_stop_resets_the_count(
        tmp_path, demo_dir, mosquitto):
    """SIGKILL after READY, as the OOM killer would: within the window each counts."""
    store = ModelStore(tmp_path / "engines")
    store.install(demo_dir / "models" / "text-det-v4")
    store.install(demo_dir / "models" / "text-det-v6")
    starts = 2
    config = agent_config(tmp_path, demo_dir, mosquitto.url,
                          agent={"crash_loop_starts": starts, "crash_loop_window_s": 600.0})
    notify = NotifyListener(tmp_path / "notify.sock")
    record = tmp_path / "state" / "boot.json"

    def start(n: int) -> AgentProcess:
        notify.messages.clear()
        agent = AgentProcess(config, notify=notify.path, log_path=tmp_path / f"agent-{n}.log")
        assert _until_ready_or_exit(agent, notify) is None, agent.log()
        return agent

    try:
        agent = start(0)
        assert agent.terminate() == 0  # a clean stop: the count stays 0
        assert json.loads(record.read_text())["failures"] == 0
        for n in range(1, starts + 1):
            agent = start(n)
            deadline = time.monotonic() + WAIT_S  # written just after READY=1 is sent
            while json.loads(record.read_text())["state"] != "ready":
                assert time.monotonic() < deadline, record.read_text()
                time.sleep(POLL_S)
            agent.kill()
            assert agent.proc.returncode == -signal.SIGKILL
        agent = start(starts + 1)
        _wait_for_status(notify, "serving text-det v4")
        assert store.current_version(NAME) == "v4" and "v6" in store.quarantined(NAME)
        assert "crash_loop_detected" in agent.log()
    finally:
        code = agent.terminate()
        notify.close()
    assert code == 0, agent.log()
