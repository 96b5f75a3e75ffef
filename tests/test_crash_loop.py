"""Crash loops: a value that would crash the agent at every start is refused at the door, and
whatever else crashes it at start-up, the version it serves is quarantined after K tries.

The agent runs as systemd runs it (the real CLI, ``$NOTIFY_SOCKET``, restarted after every
abnormal exit like ``Restart=on-failure``), on a real mosquitto, with the demo models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.models.store import ModelStore
from tests.agentproc import AgentProcess, NotifyListener, agent_config

pytestmark = pytest.mark.slow

NAME = "text-det"


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
