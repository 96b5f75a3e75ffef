"""A real mosquitto for the tests, and a subscriber that watches what reaches it.

``Mosquitto`` starts /usr/sbin/mosquitto on a free loopback port and can be killed
and restarted on the same port, with or without persistence and password checks.
``MqttProbe`` is an independent paho-mqtt client in its own thread: it subscribes,
collects every message, publishes commands, and waits for a message matching a
predicate (polling, generous timeouts: the machine running the tests is noisy).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.broker import free_port, password_line
from tests.support.certificates import TlsFiles

__all__ = [
    "MOSQUITTO",
    "WAIT_S",
    "Mosquitto",
    "MqttProbe",
    "ProbeMessage",
    "free_port",
    "poll",
    "poll_async",
    "run_as_me",
    "write_passwords",
]

MOSQUITTO = Path("/usr/sbin/mosquitto")
WAIT_S = 30.0
"""Upper bound for anything the tests wait for; never an expectation of speed."""
POLL_S = 0.02
RESCAN_S = 0.2
"""Longest a probe's wait goes without a new message before it asks its predicate again (a predicate may
read more than the messages: a log, a clock); a new message wakes it at once."""
STOP_S = 10.0


def write_passwords(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file for ``users`` (the product's own ``$7$`` lines, no mosquitto_passwd)."""
    path.write_text("".join(password_line(user, password) for user, password in users.items()))
    return path


def run_as_me() -> list[str]:
    """The ``user`` line a mosquitto started as root needs to stay this user (else it drops to "mosquitto")."""
    return [f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []


def poll(condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition") -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_S)


async def poll_async(
    condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition"
) -> None:
    """``poll`` for coroutines: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_S)


class Mosquitto:
    """mosquitto on 127.0.0.1:<free port>; ``kill()`` and ``restart()`` keep the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_client_certificate: bool = False,
        binary: Path = MOSQUITTO,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistence = persistence
        self.users = users
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.require_client_certificate = require_client_certificate
        self.binary = binary
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """The second, TLS listener (only with ``tls``); the plain one stays for probes."""
        if self.tls_port is None:
            raise RuntimeError("this mosquitto has no TLS listener")
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        lines += run_as_me()
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {str(self.require_client_certificate).lower()}",
            ]
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            password_file = write_passwords(self.workdir / "passwords", self.users)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.running:
            raise RuntimeError("mosquitto is already running")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        poll(self._accepts, what=f"mosquitto to listen on {self.port}\n{self.log_text()}")

    def _accepts(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving anything."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: the broker ends cleanly (and saves its persistence file)."""
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        """Start again on the same port (after kill() or stop())."""
        if self.running:
            self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait(STOP_S)
        self._process = None

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets open and answers nothing (a broker too busy to answer)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class ProbeMessage:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttProbe:
    """An independent subscriber (paho-mqtt, own thread) that records what it receives.

    ``persistent=True`` keeps its session (clean_session false, fixed client id), so a
    broker with persistence queues QoS 1 messages for it while it is away.
    """

    def __init__(
        self,
        port: int,
        filters: Iterable[str] = (),
        *,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls`` is ``(ca, certificate, key)`` for a listener that wants a client certificate."""
        self.filters = list(filters)
        self.messages: list[ProbeMessage] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:12]}",
            clean_session=not persistent,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            ca, cert, key = tls
            self._client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()
        self.wait_connected()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            return
        for topic_filter in self.filters:
            client.subscribe(topic_filter, qos=1)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._arrived:
            self.messages.append(
                ProbeMessage(message.topic, bytes(message.payload), message.retain, message.qos)
            )
            self._arrived.notify_all()

    def wait_connected(self, timeout: float = WAIT_S) -> None:
        poll(self._connected.is_set, timeout, "the probe to connect")
        # A round trip after SUBSCRIBE: once this comes back, the subscriptions are active.
        self._client.publish(f"probe/{id(self)}/sync", b"", qos=1).wait_for_publish(timeout)

    def snapshot(self, topic: str | None = None) -> list[ProbeMessage]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_for(
        self,
        predicate: Callable[[ProbeMessage], bool],
        timeout: float = WAIT_S,
        what: str = "a matching message",
    ) -> ProbeMessage:
        """The first message received that matches ``predicate``, waiting up to ``timeout`` seconds for one.
        The predicate is asked again when a message arrives (or after ``RESCAN_S`` without one), not on a timer."""
        deadline = time.monotonic() + timeout
        asked = -1
        while True:
            with self._arrived:
                if len(self.messages) == asked:
                    self._arrived.wait(min(RESCAN_S, max(0.0, deadline - time.monotonic())))
                messages = list(self.messages)
            asked = len(messages)
            for message in messages:
                if predicate(message):
                    return message
            if time.monotonic() > deadline:
                seen = [(m.topic, m.payload[:80]) for m in messages]
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; saw {seen}")

    async def wait_for_async(
        self,
        predicate: Callable[[ProbeMessage], bool],
        timeout: float = WAIT_S,
        what: str = "a matching message",
    ) -> ProbeMessage:
        return await asyncio.to_thread(self.wait_for, predicate, timeout, what)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.wait_connected()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT_S)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
