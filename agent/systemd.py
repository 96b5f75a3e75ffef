"""systemd integration: the sd_notify protocol and the frame-loop watchdog.

``Notifier`` speaks sd_notify(3) over ``$NOTIFY_SOCKET`` (an ``AF_UNIX`` datagram
socket, a path or an ``@`` abstract name) without libsystemd. When the variable is
unset (a terminal, a container, a test) every call is a quiet no-op. A failed send
never raises: it is logged once per run of failures and the agent carries on.

``WatchdogFeeder`` decides whether systemd's watchdog may be fed: the frame loop
reports progress, and when it has made none for ``stall_s`` the pings stop, so
systemd (``WatchdogSec=``) kills and restarts a hung agent.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping

import structlog

__all__ = [
    "NOTIFY_SOCKET_ENV",
    "WATCHDOG_PID_ENV",
    "WATCHDOG_PING_FRACTION",
    "WATCHDOG_USEC_ENV",
    "Notifier",
    "SystemdError",
    "WatchdogFeeder",
    "parse_notify_address",
    "parse_watchdog_timeout",
    "run_watchdog",
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


class SystemdError(ValueError):
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


def _field(name: str, value: str) -> str:
    if "\n" in value:
        raise SystemdError(f"{name}={value!r}: a notification value must be one line")
    return f"{name}={value}"


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when no socket was given.

    Thread-safe: the event loop and the frame worker may both send.
    """

    def __init__(
        self, address: str | bytes | None = None, *, watchdog_timeout_s: float | None = None
    ) -> None:
        if watchdog_timeout_s is not None and not (
            math.isfinite(watchdog_timeout_s) and watchdog_timeout_s > 0
        ):
            raise SystemdError(f"watchdog_timeout_s={watchdog_timeout_s!r}: must be finite and > 0")
        self._address = address
        self._watchdog_timeout_s = watchdog_timeout_s
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_environ(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset: bool = True,
        pid: int | None = None,
    ) -> Notifier:
        """Read ``$NOTIFY_SOCKET``/``$WATCHDOG_USEC``/``$WATCHDOG_PID``.

        With ``unset`` the variables are removed afterwards, so children (the
        embedded broker, GStreamer helpers) do not inherit systemd's socket.
        """
        env = os.environ if environ is None else environ
        value = env.get(NOTIFY_SOCKET_ENV)
        address = parse_notify_address(value) if value else None
        timeout = parse_watchdog_timeout(
            env.get(WATCHDOG_USEC_ENV),
            env.get(WATCHDOG_PID_ENV),
            os.getpid() if pid is None else pid,
        )
        if unset:
            for name in NOTIFY_ENV_VARS:
                env.pop(name, None)
        return cls(address, watchdog_timeout_s=timeout if address is not None else None)

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
        a TensorRT engine is built at start-up."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise SystemdError(f"extend_timeout({seconds!r}): must be finite and > 0")
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


class WatchdogFeeder:
    """Feeds systemd's watchdog only while the frame loop makes progress.

    The frame loop calls ``progress()`` after every processed frame, and also after
    a wait for a frame that came back empty (camera away), so that only a hung loop
    (stuck in inference, a deadlock) stops the pings; a missing camera is a health
    signal, not a reason for systemd to restart the agent.
    ``progress()`` may be called from any thread.
    """

    def __init__(self, stall_s: float, *, now: float | None = None) -> None:
        if not (math.isfinite(stall_s) and stall_s > 0):
            raise ValueError(f"stall_s={stall_s!r}: must be finite and > 0")
        self.stall_s = stall_s
        self._last_progress = time.monotonic() if now is None else now
        self._stalled = False

    @property
    def last_progress(self) -> float:
        return self._last_progress

    def progress(self, at: float | None = None) -> None:
        """The frame loop moved on at monotonic time ``at`` (default: now)."""
        self._last_progress = time.monotonic() if at is None else at

    def stalled_for(self, now: float) -> float:
        """Seconds since the last progress (0 when progress is newer than ``now``)."""
        return max(0.0, now - self._last_progress)

    def should_ping(self, now: float) -> bool:
        return self.stalled_for(now) <= self.stall_s

    def ping_if_alive(self, notifier: Notifier, now: float) -> bool:
        """Send ``WATCHDOG=1`` unless stalled; log when the loop stalls and recovers."""
        if not self.should_ping(now):
            if not self._stalled:
                self._stalled = True
                log.error(
                    "frame_loop_stalled",
                    stalled_for_s=round(self.stalled_for(now), 3),
                    stall_s=self.stall_s,
                    watchdog_timeout_s=notifier.watchdog_timeout_s,
                )
            return False
        if self._stalled:
            self._stalled = False
            log.warning("frame_loop_resumed")
        return notifier.watchdog()


async def run_watchdog(
    notifier: Notifier,
    feeder: WatchdogFeeder,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ping every ``notifier.watchdog_interval()`` while ``feeder`` says the loop is alive.

    Returns at once when systemd set no watchdog; otherwise runs until cancelled.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    log.info("watchdog_armed", interval_s=interval, stall_s=feeder.stall_s)
    while True:
        feeder.ping_if_alive(notifier, clock())
        await asyncio.sleep(interval)
