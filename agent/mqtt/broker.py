"""The embedded broker: a mosquitto child process on loopback, for ``[mqtt] url = "embedded"``.

Useful on a device that runs alone or bridges to the fleet broker through its
own mosquitto. Under systemd the broker lives in the agent's control group and
ends with it.

Given a ``credentials_dir`` (the agent gives its state folder) the broker takes no
anonymous client: each start draws a random password for the user ``edge-agent``,
gives mosquitto its PBKDF2-SHA512 hash (the ``$7$`` format of mosquitto_passwd) and
writes, mode 0600, ``mqtt-embedded-password`` (the password) and
``mqtt-embedded.json`` (URL, user name and that file's path) for a local CLI run as
the agent's user. Any local user can find a loopback port; only that user can read
the password. Without a ``credentials_dir`` (tests, benchmarks) it stays anonymous.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import structlog

from agent.core import MqttSection
from agent.mqtt.errors import MqttError

__all__ = [
    "BROKER_START_TIMEOUT_S",
    "BROKER_STOP_TIMEOUT_S",
    "CONNECTION_FILE",
    "EMBEDDED_USERNAME",
    "PASSWORD_FILE",
    "BrokerError",
    "EmbeddedBroker",
    "free_port",
    "password_line",
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
CONNACK = bytes([0x20, 2])
"""Any CONNACK, accepted or not: the probe has no password, and a broker that refuses it answers."""
PROBE_DISCONNECT = bytes([0xE0, 0])
EMBEDDED_USERNAME = "edge-agent"
PASSWORD_BYTES = 24
"""32 base64url characters, 192 bits: drawn anew at every start."""
PBKDF2_ITERATIONS = 101
"""What mosquitto_passwd 2.0 writes for ``$7$``; the password is random, not a person's."""
SALT_BYTES = 12
PASSWORD_FILE = "mqtt-embedded-password"
CONNECTION_FILE = "mqtt-embedded.json"
PRIVATE_MODE = 0o600


class BrokerError(MqttError, RuntimeError):
    """The embedded broker cannot be started or has ended; the message says why."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def password_line(username: str, password: str, salt: bytes | None = None) -> str:
    """One line of a mosquitto password file: ``user:$7$<iterations>$<salt>$<PBKDF2-SHA512>``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    encode = base64.b64encode
    return f"{username}:$7${PBKDF2_ITERATIONS}${encode(salt).decode()}${encode(digest).decode()}\n"


def _write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, mode 0600 from the first byte, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fchmod(fd, PRIVATE_MODE)  # an older file of that name kept its mode
    finally:
        os.close(fd)
    os.replace(tmp, path)


def render_config(port: int, host: str = LOOPBACK, password_file: Path | None = None) -> str:
    """mosquitto.conf for a loopback-only, memory-only broker logging to stderr; anonymous
    unless ``password_file`` is given."""
    access = (["allow_anonymous false", f"password_file {password_file}"] if password_file
              else ["allow_anonymous true"])
    lines = [
        f"listener {port} {host}",
        *access,
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
            answer = sock.recv(len(CONNACK) + 2)
            sock.sendall(PROBE_DISCONNECT)
            return answer[: len(CONNACK)] == CONNACK
    except OSError:
        return False


class EmbeddedBroker:
    """A mosquitto child process listening on 127.0.0.1:``port`` (0: a free port); with
    ``credentials_dir``, only for the user ``edge-agent`` with a password drawn per start."""

    def __init__(self, binary: Path, port: int = 0, *, credentials_dir: Path | None = None) -> None:
        self.binary = Path(binary)
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self.credentials_dir = credentials_dir
        self.password: str | None = None
        """The password of this start (None when anonymous)."""

    @property
    def username(self) -> str | None:
        return EMBEDDED_USERNAME if self.credentials_dir is not None else None

    def session_settings(self, settings: MqttSection) -> MqttSection:
        """``settings`` with this start's user name and password file (the agent's session)."""
        if self.password is None or self._workdir is None:
            return settings
        return settings.model_copy(update={"username": EMBEDDED_USERNAME,
                                           "password_file": self._workdir / PASSWORD_FILE})

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
        self._workdir = Path(tempfile.mkdtemp(prefix="edge-agent-mosquitto-"))  # mode 0700
        if self.credentials_dir is not None:
            self.password = secrets.token_urlsafe(PASSWORD_BYTES)
            _write_private(self._workdir / "passwd", password_line(EMBEDDED_USERNAME, self.password))
            _write_private(self._workdir / PASSWORD_FILE, self.password + "\n")
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
        passwd = self._workdir / "passwd" if self.password is not None else None
        config.write_text(render_config(port, password_file=passwd), encoding="utf-8")
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
        log.info("embedded_broker_started", url=self.url, pid=process.pid,
                 anonymous=self.password is None)
        self._publish_credentials()

    def _publish_credentials(self) -> None:
        """Where a local CLI finds this start's broker: best effort (a full disk must not stop
        the agent, which reads its own copy in the broker's private folder)."""
        if self.credentials_dir is None or self.password is None:
            return
        folder = self.credentials_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_private(folder / PASSWORD_FILE, self.password + "\n")
            _write_private(folder / CONNECTION_FILE, json.dumps({
                "url": self.url, "username": EMBEDDED_USERNAME,
                "password_file": str(folder / PASSWORD_FILE)}) + "\n")
        except OSError as exc:
            log.warning("embedded_broker_credentials_not_written", folder=str(folder), error=str(exc))

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
        if self.credentials_dir is not None:  # they open nothing any more
            for name in (CONNECTION_FILE, PASSWORD_FILE):
                try:
                    (self.credentials_dir / name).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("embedded_broker_credentials_not_removed", file=name, error=str(exc))
        self.password = None

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
