"""``make soak``: the real agent for N minutes under broker restarts and hot swaps, then a tally.

Starts a mosquitto with persistence on loopback, serves the demo text detectors (v4 and v6
as bundles) over loopback HTTP, runs ``edge-agent run`` as a subprocess on the demo video,
and meanwhile stops and restarts the broker and deploys v6, v4, v6, ... in turn. A
persistent-session subscriber counts every telemetry, event and reply message by topic and
sequence number. At the end it tallies frames processed, messages the agent made, received,
dropped (by the agent's own count) and unaccounted for, reconnects, deployments, and the
agent's resident memory at start and end; the soak fails (``soak_passed``) when a message is
unaccounted for or the agent did not stop cleanly. Numbers only; nothing here asserts a timing.
``python -m agent.cli.soak`` runs it and prints the tally.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pwd
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.models import ModelStore, pack_bundle
from agent.wire import DeploymentState

__all__ = ["Soak", "soak_passed"]

DEVICE = "soak"
SEQUENCED = ("telemetry/latency", "telemetry/health", "events", "reply")
"""Topic suffixes that pass through the agent's outbox; each counts 1, 2, 3, ..."""
BROKER_EVERY_S = 40.0
OUTAGE_S = 5.0
DEPLOY_EVERY_S = 30.0
DEPLOY_TIMEOUT_S = 180.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
"""After the agent stopped, how long the subscriber may take to receive the rest."""
POLL_S = 0.2
SOAK_PROBATION = {"window_s": 5.0, "max_error_rate": 0.05, "max_latency_ratio": 100.0}
"""v6 is slower than v4 on a CPU; the soak swaps for the churn, not to judge the models."""


class Broker:
    """mosquitto on 127.0.0.1:<port> with persistence, stopped (SIGTERM) and started on the same port."""

    def __init__(self, workdir: Path, binary: str = "/usr/sbin/mosquitto") -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.binary = binary
        self.config = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {workdir}/", "max_queued_messages 100000",
                 "log_dest file " + str(workdir / "mosquitto.log")]
        if os.geteuid() == 0:
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.config.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(POLL_S)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(STOP_TIMEOUT_S)
        self._process = None


class Counter:
    """A persistent-session subscriber: every message of the device, by topic and seq."""

    def __init__(self, port: int) -> None:
        self.seen: dict[str, dict[int, bytes]] = defaultdict(dict)
        self.duplicates = 0
        self.latest: dict[str, dict[str, Any]] = {}
        self.first_health: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:8]}",
                                   clean_session=False)
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = lambda c, *_: c.subscribe(f"edge/{DEVICE}/#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        suffix = message.topic.removeprefix(f"edge/{DEVICE}/")
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            self.latest[suffix] = body
            if suffix == "telemetry/health" and len(self.first_health) < 3:
                self.first_health.append(body)
            if suffix in SEQUENCED:
                if body["seq"] in self.seen[suffix]:
                    self.duplicates += 1
                self.seen[suffix][body["seq"]] = message.payload

    def get(self, suffix: str) -> dict[str, Any] | None:
        with self._lock:
            return self.latest.get(suffix)

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def write_config(path: Path, work: Path, demo: Path, broker_port: int) -> None:
    path.write_text(f"""
[agent]
device_id = "{DEVICE}"
state_dir = "{work / 'state'}"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
reconnect_min_s = 0.5
reconnect_max_s = 5.0
[source]
uri = "{demo / 'video.mp4'}"
pace = "native"
[model]
name = "text-det"
store = "{work / 'engines'}"
threads = 1
[telemetry]
health_period_s = 5.0
latency_period_s = 2.0
[deploy]
probation_s = 5.0
latency_budget_ms = 60000.0
""")


def read_outbox(path: Path) -> tuple[dict[str, int], int, list[tuple[str, bytes]]]:
    """Last sequence numbers handed out, the drop count, and what still waits, from the agent's db."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        last = {str(k): int(v) for k, v in db.execute("SELECT key, last FROM sequences")}
        row = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        left = [(str(t), bytes(p)) for t, p in db.execute("SELECT topic, payload FROM messages")]
    finally:
        db.close()
    return last, int(row[0]) if row else 0, left


class Soak:
    """One soak run in ``work``: broker, artifact server, the agent as a subprocess, the churn, the tally."""

    def __init__(self, minutes: float, demo: Path, work: Path) -> None:
        self.minutes = minutes
        self.demo = demo
        self.work = work
        self.broker = Broker(work)
        self.outages = 0
        self.deploys: dict[str, int] = defaultdict(int)

    def _deploy(self, counter: Counter, version: str, port: int, sha: dict[str, str]) -> None:
        command_id = f"soak-{version}-{uuid.uuid4().hex[:6]}"
        counter.publish(f"edge/{DEVICE}/cmd/deploy", json.dumps({
            "id": command_id, "name": "text-det", "version": version, "format": "bundle",
            "url": f"http://127.0.0.1:{port}/{version}.tar", "sha256": sha[version],
            "probation": SOAK_PROBATION}).encode())
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while time.monotonic() < deadline:
            state = counter.get("deployment")
            reply = counter.get("reply")
            if state and state["deployment_id"] == command_id and state["state"] in DeploymentState.FINAL:
                self.deploys[state["state"]] += 1
                return
            if reply and reply.get("id") == command_id and not reply["ok"]:
                self.deploys[f"refused: {reply['error']['code']}"] += 1
                return
            time.sleep(POLL_S)
        self.deploys["no final state in time"] += 1

    def run(self) -> dict[str, Any]:
        """Soak the agent for ``minutes`` and return the tally (figure name -> value)."""
        artifacts = self.work / "artifacts"
        artifacts.mkdir()
        sha = {}
        for version in ("v4", "v6"):
            pack_bundle(self.demo / "models" / f"text-det-{version}", artifacts / f"{version}.tar")
            sha[version] = hashlib.sha256((artifacts / f"{version}.tar").read_bytes()).hexdigest()
        ModelStore(self.work / "engines").install(self.demo / "models" / "text-det-v4")
        http_server, http_port = serve(artifacts)
        self.broker.start()
        counter = Counter(self.broker.port)
        config = self.work / "config.toml"
        write_config(config, self.work, self.demo, self.broker.port)
        log = (self.work / "agent.core.log").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        started = time.monotonic()
        end = started + self.minutes * 60
        next_outage, next_deploy = started + BROKER_EVERY_S, started + DEPLOY_EVERY_S
        version = "v6"
        try:
            while time.monotonic() < end and agent.poll() is None:
                now = time.monotonic()
                if now >= next_outage:
                    self.broker.stop()
                    time.sleep(OUTAGE_S)
                    self.broker.start()
                    self.outages += 1
                    next_outage = time.monotonic() + BROKER_EVERY_S
                elif now >= next_deploy:
                    self._deploy(counter, version, http_port, sha)
                    version = "v4" if version == "v6" else "v6"
                    next_deploy = time.monotonic() + DEPLOY_EVERY_S
                time.sleep(POLL_S)
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(STOP_TIMEOUT_S)
            log.close()
        return self._tally(counter, code, http_server)

    def _tally(self, counter: Counter, code: int, http_server: http.server.HTTPServer) -> dict[str, Any]:
        last, dropped, left = read_outbox(self.work / "state" / "outbox.sqlite3")
        made = sum(last.get(key, 0) for key in SEQUENCED)
        waiting = {(t.removeprefix(f"edge/{DEVICE}/"), json.loads(p)["seq"]) for t, p in left}

        def unaccounted() -> int:
            return sum(1 for key in SEQUENCED for seq in range(1, last.get(key, 0) + 1)
                       if seq not in counter.seen[key] and (key, seq) not in waiting)

        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while unaccounted() > dropped and time.monotonic() < deadline:
            time.sleep(POLL_S)
        received = sum(len(counter.seen[key]) for key in SEQUENCED)
        health = counter.get("telemetry/health") or {}
        latency = counter.get("telemetry/latency") or {}
        first = counter.first_health[-1] if counter.first_health else {}
        missing = unaccounted()
        tally = {
            "minutes": self.minutes,
            "frames_processed": max(health.get("frames_processed", 0), latency.get("frames_processed", 0)),
            "telemetry_made": made, "telemetry_received": received, "telemetry_dropped": dropped,
            "telemetry_waiting_in_outbox": len(left), "telemetry_unaccounted": missing,
            "duplicates_received": counter.duplicates,
            "broker_outages": self.outages, "reconnects": health.get("broker", {}).get("reconnects"),
            "deployments": dict(self.deploys), "serving": (health.get("model") or {}).get("version"),
            "rss_start_mb": round(first.get("memory_rss_bytes", 0) / 2**20, 1),
            "rss_end_mb": round(health.get("memory_rss_bytes", 0) / 2**20, 1),
            "agent_exit_code": code,
        }
        counter.close()
        http_server.shutdown()
        self.broker.stop()
        return tally


def soak_passed(tally: dict[str, Any]) -> bool:
    """Every message the agent made reached the subscriber or was dropped by its own count, and it stopped cleanly."""
    return bool(tally["telemetry_unaccounted"] <= tally["telemetry_dropped"] and tally["agent_exit_code"] == 0)
