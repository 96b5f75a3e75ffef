"""systemd integration: the sd_notify protocol and the frame-loop watchdog.

``Notifier`` speaks sd_notify(3) over ``$NOTIFY_SOCKET`` (an ``AF_UNIX`` datagram
socket, a path or an ``@`` abstract name) without libsystemd. When the variable is
unset (a terminal, a container, a test) every call is a quiet no-op. A failed send
never raises: it is logged once per run of failures and the agent carries on. Nor
does a value: a status carrying a model version that came over MQTT is made one
printable line (a newline would start a new ``NAME=value`` assignment), never refused.

``WatchdogFeeder`` decides whether systemd's watchdog may be fed: when the frame
loop has made no progress for ``stall_s`` the pings stop, so systemd
(``WatchdogSec=``) kills and restarts a hung agent.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

import structlog

from agent.device.errors import DeviceError

__all__ = [
    "NOTIFY_SOCKET_ENV",
    "WATCHDOG_PID_ENV",
    "WATCHDOG_PING_FRACTION",
    "WATCHDOG_USEC_ENV",
    "Notifier",
    "SystemdError",
    "WatchdogFeeder",
    "one_line",
    "parse_notify_address",
    "parse_watchdog_timeout",
]

log = structlog.get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
NOTIFY_ENV_VARS = (NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV)

WATCHDOG_PING_FRACTION = 0.5
"""sd_watchdog_enabled(3) advises pinging at half the configured timeout."""
UNIX_PATH_MAX = 108
"""Size of ``sun_path``: a path needs its trailing NUL, an abstract name its leading one."""
USEC_PER_S = 1_000_000
MAX_VALUE_CHARS = 1024
"""A notification value is clipped here: STATUS= is read by people, and a datagram is bounded."""


class SystemdError(DeviceError, ValueError):
    """systemd's environment or a notification is malformed; the message names which."""


def parse_notify_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address: a path, or ``b"\\0name"`` for ``@name``."""
    if value.startswith("@"):
        name = value[1:].encode()
        if not name:
            raise SystemdError(f"{NOTIFY_SOCKET_ENV}={value!r}: the name after '@' is empty")
        address: str | bytes = b"\0" + name
        size = len(address)
    elif value.startswith("/"):
        address = value
        size = len(value.encode()) + 1
    else:
        raise SystemdError(
            f"{NOTIFY_SOCKET_ENV}={value!r}: not an absolute path nor an '@' abstract socket name"
        )
    if size > UNIX_PATH_MAX:
        raise SystemdError(
            f"{NOTIFY_SOCKET_ENV}={value!r}: longer than an AF_UNIX address ({UNIX_PATH_MAX} bytes)"
        )
    return address


def parse_watchdog_timeout(usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    """The watchdog timeout in seconds that systemd set for ``pid``, or ``None`` if none.

    ``$WATCHDOG_PID`` names the process the watchdog is meant for; a child that
    inherited the variables (or a process started by another) is not it.
    """
    if usec is None or usec == "":
        return None
    try:
        timeout_usec = int(usec)
    except ValueError:
        raise SystemdError(f"{WATCHDOG_USEC_ENV}={usec!r}: not an integer") from None
    if timeout_usec <= 0:
        raise SystemdError(f"{WATCHDOG_USEC_ENV}={usec!r}: must be a positive microsecond count")
    if watchdog_pid is not None and watchdog_pid != "":
        try:
            meant_for = int(watchdog_pid)
        except ValueError:
            raise SystemdError(f"{WATCHDOG_PID_ENV}={watchdog_pid!r}: not a process id") from None
        if meant_for != pid:
            return None
    return timeout_usec / USEC_PER_S


def one_line(value: str) -> str:
    """``value`` as one printable line of at most ``MAX_VALUE_CHARS``: line breaks and other
    control characters become spaces, what is not UTF-8 is escaped. Never raises."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:MAX_VALUE_CHARS]


def _field(name: str, value: str) -> str:
    return f"{name}={one_line(value)}"


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when ``$NOTIFY_SOCKET`` is unset.

    Reads ``$NOTIFY_SOCKET``/``$WATCHDOG_USEC``/``$WATCHDOG_PID`` from ``environ``
    (default ``os.environ``). With ``unset`` they are removed afterwards, so that
    children (the embedded broker, GStreamer helpers) do not inherit systemd's socket.
    Thread-safe: the event loop and the frame worker may both send.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset: bool = True,
        pid: int | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        value = env.get(NOTIFY_SOCKET_ENV)
        self._address = parse_notify_address(value) if value else None
        timeout = parse_watchdog_timeout(
            env.get(WATCHDOG_USEC_ENV),
            env.get(WATCHDOG_PID_ENV),
            os.getpid() if pid is None else pid,
        )
        self._watchdog_timeout_s = timeout if self._address is not None else None
        if unset:
            for name in NOTIFY_ENV_VARS:
                env.pop(name, None)
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_timeout_s(self) -> float | None:
        """``WatchdogSec=`` as systemd gave it to this process, or ``None``."""
        return self._watchdog_timeout_s

    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half the timeout), or ``None``."""
        if self._watchdog_timeout_s is None:
            return None
        return self._watchdog_timeout_s * WATCHDOG_PING_FRACTION

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd considers the unit started and arms the watchdog."""
        return self.send(("READY", "1"), *self._status(status))

    def status(self, text: str) -> bool:
        """A one-line free-form state shown by ``systemctl status``."""
        return self.send(("STATUS", text))

    def watchdog(self) -> bool:
        return self.send(("WATCHDOG", "1"))

    def stopping(self, status: str | None = None) -> bool:
        return self.send(("STOPPING", "1"), *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began; send ``ready()`` when it is done. Carries the monotonic time
        that ``Type=notify-reload`` (systemd 253+) requires and older versions ignore."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(
            ("RELOADING", "1"), ("MONOTONIC_USEC", str(now_usec)), *self._status(status)
        )

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires, e.g. while
        a TensorRT engine is built at start-up. A count that is not finite and > 0 is
        logged and not sent."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            log.warning("systemd_extend_timeout_refused", seconds=repr(seconds))
            return False
        return self.send(("EXTEND_TIMEOUT_USEC", str(round(seconds * USEC_PER_S))))

    def send(self, *fields: tuple[str, str]) -> bool:
        """Send one datagram of ``NAME=value`` lines; ``True`` when it was handed to systemd."""
        message = "\n".join(_field(name, value) for name, value in fields).encode()
        if self._address is None:
            return False
        try:
            self._sock().sendto(message, self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "systemd_notify_failed",
                    message=message.decode(errors="replace"),
                    error=exc.strerror or str(exc),
                )
            return False
        if self._failing:
            self._failing = False
            log.info("systemd_notify_recovered")
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _sock(self) -> socket.socket:
        with self._lock:
            if self._socket is None:
                # Non-blocking: a busy PID 1 must never stall the event loop; a full
                # queue is a failed send like any other.
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            return self._socket

    @staticmethod
    def _status(status: str | None) -> tuple[tuple[str, str], ...]:
        return () if status is None else (("STATUS", status),)


@dataclass(frozen=True)
class WatchdogFeeder:
    """Decides whether systemd's watchdog may be fed, from the frame loop's progress.

    ``last_progress`` is the monotonic time the frame loop last moved on. What the
    caller counts as progress decides what gets the agent restarted: processed
    frames only (then a camera that stays away longer than ``stall_s`` does too),
    or also a wait for a frame that came back empty (then only a hung loop does).
    """

    stall_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stall_s) and self.stall_s > 0):
            raise ValueError(f"stall_s={self.stall_s!r}: must be finite and > 0")

    def stalled_for(self, last_progress: float, now: float) -> float:
        """Seconds without progress (0 when the progress is newer than ``now``)."""
        return max(0.0, now - last_progress)

    def should_ping(self, last_progress: float, now: float) -> bool:
        return self.stalled_for(last_progress, now) <= self.stall_s
