"""Run the real agent CLI as a subprocess, the way systemd does, and listen as systemd would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.models.store import ModelStore

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 90.0
ANY_PORT = "127.0.0.1:0"
"""The live view's listen address for test agents: a free port each, never the default 8090 that parallel
tests (and a ``make run`` beside them) would share."""
TEST_FPS = 5.0
"""Frames a second a test agent infers (its camera's ``fps``; the demo video delivers 15): every inferred
frame still goes through every stage, at a third of the CPU that a parallel run on two cores is short of.
A test that needs its frames sooner asks for them (``camera={"fps": None}``: every frame the video gives)."""
CAMERA = "camera0"
"""The test agent's one camera (the name a ``[source]`` section's camera has)."""
BEHAVIOUR_UNJUDGED = {"behaviour_max_score_js": 1.0, "behaviour_max_label_js": 1.0, "behaviour_max_reference_js": 1.0,
                      "behaviour_max_reference_psi": 1e9, "behaviour_min_count_ratio": 1e-9,
                      "behaviour_max_count_ratio": 1e9}
"""``[deploy]`` behavioural bounds too wide for any model to fail, for tests about a deployment's mechanics
(the swap, the journal, a rollback, an interrupted deploy). At ``TEST_FPS`` the old model's baseline and the
new one's first frames can come from different scenes of the demo video: a CI run rolled v6 back on a score
distribution JS distance of 0.87 (0.27 over the whole video). Behaviour has its own tests (tests/models,
tests/e2e/test_behaviour_e2e.py)."""
SLOW_MACHINE = {"latency_budget_ms": 120_000.0}
"""``[deploy]`` for a shared test machine: a deployment must not fail for being slow here (a loaded
parallel run measured 3.6 s for a warm inference the default 2 s budget refuses)."""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any] | list[dict[str, Any]]]) -> Path:
    """``sections`` as TOML: a dict is a ``[table]``, a list of dicts an array of ``[[tables]]``; a None value
    is left out (the key's default)."""
    lines = []
    for section, tables in sections.items():
        header = f"[[{section}]]" if isinstance(tables, list) else f"[{section}]"
        for values in tables if isinstance(tables, list) else [tables]:
            lines.append(header)
            lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def agent_config(tmp: Path, demo: Path, mqtt_url: str, device_id: str = "dev1",
                 **overrides: dict[str, Any]) -> Path:
    """A config for a test agent: its own store (text-det v4 installed), state dir, one ``[[camera]]`` on the
    demo video at ``TEST_FPS``. ``overrides`` update the sections by name; ``camera`` (or ``source``) the camera."""
    store_root = tmp / "engines"
    if not store_root.exists():
        ModelStore(store_root).install(demo / "models" / "text-det-v4")
    camera: dict[str, Any] = {"name": CAMERA, "uri": str(demo / "video.mp4"), "pace": "native", "loop": True,
                              "fps": TEST_FPS}
    camera.update(overrides.pop("source", {}))
    camera.update(overrides.pop("camera", {}))
    sections: dict[str, dict[str, Any]] = {
        "agent": {"device_id": device_id, "state_dir": str(tmp / "state"), "groups": ["lab"],
                  "stop_timeout_s": 10.0},
        "mqtt": {"url": mqtt_url, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "model": {"name": "text-det", "store": str(store_root), "threads": 1},
        "telemetry": {"health_period_s": 1.0, "latency_period_s": 0.5},
        "live_view": {"listen": ANY_PORT},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return write_config(tmp / "config.toml", {**sections, "camera": [camera]})


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket the agent reports READY/WATCHDOG/STATUS to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def wait_for(self, line: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if any(line in m.splitlines() for m in self.messages):
                return
        raise AssertionError(f"no {line!r} from the agent in {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class AgentProcess:
    def __init__(self, config: Path, *, notify: Path | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        environ = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        if notify is not None:
            environ["NOTIFY_SOCKET"] = str(notify)
            environ["WATCHDOG_USEC"] = "4000000"
        environ.update(env or {})
        self.log_path = log_path or config.with_name("agent.core.log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO, env=environ, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
