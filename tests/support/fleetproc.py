"""Run the fleet commands as a user would: ``edge-agent fleet ...`` subprocesses against a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.mosquitto import WAIT_S, MqttProbe, poll

REPO = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 240.0
"""Upper bound for one fleet command in the tests; never an expectation of speed."""
START_S = 90.0
"""Upper bound for a fleet process to start (imports, broker connection) on a loaded machine; the same bound
the agent's processes get. Never an expectation of speed: a process that exits fails the wait at once."""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run(*args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cli(*args), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(args[:2])} ran over {timeout:.0f}s; it printed:\n"
                             f"{exc.stdout or ''}\n{exc.stderr or ''}") from None


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(cli(*args), cwd=REPO, env=env(), stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT)


def wait_started(process: subprocess.Popen[bytes], log: Path, line: str = "consumer_started",
                 timeout: float = START_S) -> str:
    """Wait until ``line`` is in the process's ``log`` and return the log; fail at once if the process exits
    first, and after ``timeout`` seconds, with the log either way."""
    try:
        poll(lambda: line in log.read_text() or process.poll() is not None, timeout, line)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the log:\n{log.read_text()}") from None
    text = log.read_text()
    if line not in text:
        raise AssertionError(f"the process exited ({process.returncode}) before logging {line}:\n{text}")
    return text


def stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def payloads(probe: MqttProbe, suffix: str) -> list[dict[str, Any]]:
    """Every non-empty payload the probe saw on ``edge/<id>/<suffix>``, oldest first."""
    return [json.loads(m.payload) for m in probe.snapshot()
            if m.topic.split("/", 2)[-1] == suffix and m.payload]


def latest(probe: MqttProbe, suffix: str) -> dict[str, dict[str, Any]]:
    """The newest payload per device on ``edge/<id>/<suffix>``."""
    found: dict[str, dict[str, Any]] = {}
    for payload in payloads(probe, suffix):
        found[payload["device_id"]] = payload
    return found


def retained(port: int, suffix: str, expect: int) -> dict[str, dict[str, Any]]:
    """The retained payload of ``edge/+/<suffix>`` per device, read by a fresh subscriber."""
    probe = MqttProbe(port, [f"edge/+/{suffix}"])
    try:
        poll(lambda: len({m.topic for m in probe.snapshot() if m.retain}) >= expect,
             what=f"{expect} retained {suffix} messages")
        return {json.loads(m.payload)["device_id"]: json.loads(m.payload) for m in probe.snapshot() if m.retain}
    finally:
        probe.close()


@contextmanager
def simulated_fleet(port: int, n: int, log: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """``edge-agent fleet simulate``, ready once all ``n`` devices published ``online``; stopped after."""
    prefix = options[options.index("--id-prefix") + 1] if "--id-prefix" in options else "sim"
    probe = MqttProbe(port, ["edge/+/status"])
    process = start("fleet", "simulate", "--broker", f"mqtt://127.0.0.1:{port}", "-n", str(n), *options, log=log)
    try:
        def all_online() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the simulator exited: {log.read_text()}")
            return sum(s["state"] == "online" for d, s in latest(probe, "status").items()
                       if d.startswith(f"{prefix}-")) >= n

        poll(all_online, timeout=WAIT_S * 2, what=f"{n} simulated devices online")
        probe.close()
        yield process
    finally:
        probe.close()
        stop(process)
