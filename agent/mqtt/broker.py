"""The embedded broker: a mosquitto child process on loopback, for ``[mqtt] url = "embedded"``.

Useful on a device that runs alone or bridges to the fleet broker through its
own mosquitto. Under systemd the broker lives in the agent's control group and
ends with it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import structlog

__all__ = [
    "BROKER_START_TIMEOUT_S",
    "BROKER_STOP_TIMEOUT_S",
    "BrokerError",
    "EmbeddedBroker",
    "free_port",
    "render_config",
]

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
BROKER_START_TIMEOUT_S = 10.0
"""How long mosquitto may take to accept connections."""
BROKER_STOP_TIMEOUT_S = 5.0
"""How long mosquitto may take to end after SIGTERM before it is killed."""
PORT_POLL_INTERVAL_S = 0.05
START_ATTEMPTS = 3
"""A free port picked by the OS can be taken by someone else before mosquitto binds it."""
LOG_TAIL_BYTES = 2000
PROBE_TIMEOUT_S = 0.5
# MQTT 3.1.1 CONNECT (clean session, keepalive 60 s, empty client id), its CONNACK, DISCONNECT.
PROBE_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 0])
CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])
PROBE_DISCONNECT = bytes([0xE0, 0])


class BrokerError(RuntimeError):
    """The embedded broker cannot be started or has ended; the message says why."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(port: int, host: str = LOOPBACK) -> str:
    """mosquitto.conf for a loopback-only, anonymous, memory-only broker logging to stderr."""
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if os.geteuid() == 0:
        # mosquitto run as root switches to the "mosquitto" user unless told to stay.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


def _answers_mqtt(host: str, port: int) -> bool:
    """True when an MQTT broker (not just any listener) answers CONNECT with a CONNACK."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.sendall(PROBE_CONNECT)
            answer = sock.recv(len(CONNACK_ACCEPTED))
            sock.sendall(PROBE_DISCONNECT)
            return answer == CONNACK_ACCEPTED
    except OSError:
        return False


class EmbeddedBroker:
    """A mosquitto child process listening on 127.0.0.1:``port`` (0: a free port)."""

    def __init__(self, binary: Path, port: int = 0) -> None:
        self.binary = Path(binary)
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("embedded broker is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return None if self._workdir is None else self._workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The mosquitto process id (for resource measurements)."""
        if self._process is None:
            raise BrokerError("embedded broker is not started")
        return self._process.pid

    def start(self) -> None:
        """Start mosquitto and wait until it accepts connections (blocking, bounded)."""
        if self._process is not None:
            raise BrokerError("embedded broker is already started")
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise BrokerError(
                f"mosquitto binary {self.binary} not found or not executable "
                "(install mosquitto or set [mqtt] embedded_binary)"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="edge-agent-mosquitto-"))
        attempts = 1 if self._requested_port else START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            try:
                self._launch(port)
                return
            except BrokerError:
                if attempt == attempts:
                    self._cleanup()
                    raise
                log.warning("embedded_broker_retry", port=port, attempt=attempt)

    def _launch(self, port: int) -> None:
        assert self._workdir is not None and self.log_path is not None
        config = self._workdir / "mosquitto.conf"
        config.write_text(render_config(port), encoding="utf-8")
        with self.log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [str(self.binary), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                # Its own session: a Ctrl-C at the terminal reaches the agent, which
                # publishes `offline` through the broker before it stops it.
                start_new_session=True,
            )
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while not _answers_mqtt(LOOPBACK, port):
            if process.poll() is not None or time.monotonic() > deadline:
                self._end(process)
                why = "exited" if process.returncode is not None else "did not listen in time"
                raise BrokerError(f"mosquitto on port {port} {why}: {self._log_tail()}")
            time.sleep(PORT_POLL_INTERVAL_S)
        self._process, self._port = process, port
        log.info("embedded_broker_started", url=self.url, pid=process.pid)

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()[-LOG_TAIL_BYTES:]
        return data.decode("utf-8", "replace").strip() or "(empty log)"

    @staticmethod
    def _end(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(BROKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def stop(self) -> None:
        """End mosquitto (SIGTERM, then SIGKILL) and remove its files; safe to call twice."""
        if self._process is not None:
            self._end(self._process)
            log.info("embedded_broker_stopped", returncode=self._process.returncode)
            self._process = None
        self._port = None
        self._cleanup()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
