"""sd_notify over a real AF_UNIX datagram socket, WATCHDOG_* parsing and the stall logic."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent.core.config import WatchdogSection
from agent.device.systemd import (
    MAX_VALUE_CHARS,
    NOTIFY_SOCKET_ENV,
    WATCHDOG_PID_ENV,
    WATCHDOG_USEC_ENV,
    Notifier,
    SystemdError,
    WatchdogFeeder,
    parse_notify_address,
    parse_watchdog_timeout,
)

REPO = Path(__file__).resolve().parents[2]
RECEIVE_GUARD_S = 10.0
"""Only bounds a hang: every datagram is already queued when sendto() returns."""


class NotifySocket:
    """What systemd binds: an AF_UNIX datagram socket; ``name`` is the $NOTIFY_SOCKET value."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(parse_notify_address(name))
        self.sock.settimeout(RECEIVE_GUARD_S)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_queued(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    # A short folder: AF_UNIX paths must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        if request.param == "path":
            name = str(Path(folder) / "notify")
        else:
            name = f"@edge-agent-test/{os.getpid()}/{uuid.uuid4().hex}"
        bound = NotifySocket(name)
        try:
            yield bound
        finally:
            bound.sock.close()


def notifier_for(bound: NotifySocket, **extra: str) -> Notifier:
    return Notifier({NOTIFY_SOCKET_ENV: bound.name, **extra})


def test_ready_status_watchdog_stopping_arrive_exactly(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket)
    try:
        assert notifier.enabled
        assert notifier.ready()
        assert notify_socket.receive() == "READY=1"
        assert notifier.status("serving text-det 4.0.0 at 14.8 fps")
        assert notify_socket.receive() == "STATUS=serving text-det 4.0.0 at 14.8 fps"
        assert notifier.watchdog()
        assert notify_socket.receive() == "WATCHDOG=1"
        assert notifier.stopping()
        assert notify_socket.receive() == "STOPPING=1"
    finally:
        notifier.close()


def test_ready_and_stopping_can_carry_a_status_in_the_same_datagram(
    notify_socket: NotifySocket,
) -> None:
    notifier = notifier_for(notify_socket)
    notifier.ready(status="serving text-det 4.0.0")
    assert notify_socket.receive() == "READY=1\nSTATUS=serving text-det 4.0.0"
    notifier.stopping(status="stopping: SIGTERM")
    assert notify_socket.receive() == "STOPPING=1\nSTATUS=stopping: SIGTERM"
    notifier.close()


def test_reloading_carries_the_monotonic_time_of_the_reload(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket)
    low = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    high = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = notify_socket.receive().split("\n")
    assert lines[0] == "RELOADING=1"
    name, value = lines[1].split("=")
    assert name == "MONOTONIC_USEC"
    assert low <= int(value) <= high
    notifier.close()


def test_extend_timeout_is_sent_in_microseconds(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket)
    notifier.extend_timeout(90.5)
    assert notify_socket.receive() == "EXTEND_TIMEOUT_USEC=90500000"
    with structlog.testing.capture_logs() as logs:
        assert notifier.extend_timeout(0) is False
        assert notifier.extend_timeout(float("nan")) is False
    assert [entry["event"] for entry in logs] == ["systemd_extend_timeout_refused"] * 2
    assert notify_socket.nothing_queued()
    notifier.close()


def test_a_multi_line_status_is_sent_as_one_line_and_cannot_add_an_assignment(
    notify_socket: NotifySocket,
) -> None:
    notifier = notifier_for(notify_socket)
    assert notifier.status("serving text-det v5\nREADY=1") is True
    assert notify_socket.receive() == "STATUS=serving text-det v5 READY=1"
    notifier.close()


@pytest.mark.parametrize("value", ["v5\n", "\r\n\t\x00\x1b[2J", "\ud800", "x" * 100_000, "\u2028ok"])
def test_no_value_makes_the_notifier_raise_and_each_arrives_as_one_printable_line(
    notify_socket: NotifySocket, value: str,
) -> None:
    notifier = notifier_for(notify_socket)
    assert notifier.ready(status=value) is True
    lines = notify_socket.receive().split("\n")
    assert lines[0] == "READY=1" and lines[1].startswith("STATUS=") and len(lines) == 2
    assert lines[1].isprintable() and len(lines[1]) <= len("STATUS=") + MAX_VALUE_CHARS
    notifier.close()


def test_without_notify_socket_every_call_is_a_quiet_noop() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    with structlog.testing.capture_logs() as logs:
        assert notifier.ready() is False
        assert notifier.status("x") is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
        assert notifier.reloading() is False
    assert logs == []


def test_a_send_failure_never_raises_and_is_logged_once_per_run_of_failures() -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        name = str(Path(folder) / "notify")
        bound = NotifySocket(name)
        notifier = notifier_for(bound)
        bound.sock.close()
        os.unlink(name)  # systemd went away: nobody listens at the path any more
        with structlog.testing.capture_logs() as logs:
            assert notifier.ready() is False
            assert notifier.watchdog() is False
            assert notifier.watchdog() is False
        assert [entry["event"] for entry in logs] == ["systemd_notify_failed"]
        assert logs[0]["log_level"] == "warning"
        assert logs[0]["message"] == "READY=1"

        back = NotifySocket(name)  # and came back
        with structlog.testing.capture_logs() as logs:
            assert notifier.watchdog() is True
        assert back.receive() == "WATCHDOG=1"
        assert [entry["event"] for entry in logs] == ["systemd_notify_recovered"]
        back.sock.close()
        notifier.close()


def test_reading_the_environment_removes_the_variables_so_children_do_not_inherit_them(
    notify_socket: NotifySocket,
) -> None:
    environ = {
        NOTIFY_SOCKET_ENV: notify_socket.name,
        WATCHDOG_USEC_ENV: "30000000",
        WATCHDOG_PID_ENV: str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier(environ)
    assert environ == {"PATH": "/usr/bin"}
    assert notifier.watchdog_timeout_s == 30.0
    kept = {NOTIFY_SOCKET_ENV: notify_socket.name}
    Notifier(kept, unset=False)
    assert kept == {NOTIFY_SOCKET_ENV: notify_socket.name}
    notifier.close()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("relative/notify", "not an absolute path"),
        ("@", "name after '@' is empty"),
        ("/" + "x" * 107, "longer than an AF_UNIX address"),
        ("vsock:2:1234", "not an absolute path"),
    ],
)
def test_a_malformed_notify_socket_is_an_error_naming_the_variable(
    value: str, problem: str
) -> None:
    with pytest.raises(SystemdError, match=NOTIFY_SOCKET_ENV) as caught:
        Notifier({NOTIFY_SOCKET_ENV: value})
    assert problem in str(caught.value)


def test_watchdog_usec_gives_the_timeout_and_a_ping_interval_of_half_of_it() -> None:
    notifier = Notifier(
        {NOTIFY_SOCKET_ENV: "/run/systemd/notify", WATCHDOG_USEC_ENV: "30000000"}
    )
    assert notifier.watchdog_timeout_s == 30.0
    assert notifier.watchdog_interval() == 15.0


def test_watchdog_meant_for_our_pid_is_used() -> None:
    environ = {
        NOTIFY_SOCKET_ENV: "/run/systemd/notify",
        WATCHDOG_USEC_ENV: "20000000",
        WATCHDOG_PID_ENV: "4242",
    }
    assert Notifier(dict(environ), pid=4242).watchdog_interval() == 10.0


def test_watchdog_meant_for_another_pid_is_ignored() -> None:
    environ = {
        NOTIFY_SOCKET_ENV: "/run/systemd/notify",
        WATCHDOG_USEC_ENV: "20000000",
        WATCHDOG_PID_ENV: "4242",
    }
    notifier = Notifier(environ, pid=4243)
    assert notifier.watchdog_timeout_s is None
    assert notifier.watchdog_interval() is None


def test_no_watchdog_without_watchdog_usec_or_without_a_socket() -> None:
    assert parse_watchdog_timeout(None, None, 1) is None
    assert parse_watchdog_timeout("", None, 1) is None
    assert Notifier({WATCHDOG_USEC_ENV: "30000000"}).watchdog_interval() is None


@pytest.mark.parametrize(
    ("usec", "pid", "variable"),
    [
        ("thirty", None, WATCHDOG_USEC_ENV),
        ("0", None, WATCHDOG_USEC_ENV),
        ("-5", None, WATCHDOG_USEC_ENV),
        ("1.5", None, WATCHDOG_USEC_ENV),
        ("30000000", "me", WATCHDOG_PID_ENV),
    ],
)
def test_malformed_watchdog_variables_are_errors_naming_the_variable(
    usec: str, pid: str | None, variable: str
) -> None:
    with pytest.raises(SystemdError, match=variable):
        parse_watchdog_timeout(usec, pid, 1)


def test_feeder_pings_while_the_frame_loop_progresses_and_stops_when_it_stalls() -> None:
    feeder = WatchdogFeeder(stall_s=10.0)
    assert feeder.should_ping(last_progress=100.0, now=100.0)
    assert feeder.should_ping(last_progress=100.0, now=110.0)  # the bound itself is still alive
    assert not feeder.should_ping(last_progress=100.0, now=110.001)
    assert feeder.should_ping(last_progress=150.0, now=155.0)
    assert feeder.stalled_for(last_progress=150.0, now=155.0) == 5.0
    assert not feeder.should_ping(last_progress=150.0, now=160.5)


def test_progress_newer_than_the_clock_reading_counts_as_no_stall() -> None:
    # The frame thread may report progress between the loop reading the clock and asking.
    feeder = WatchdogFeeder(stall_s=1.0)
    assert feeder.stalled_for(last_progress=50.2, now=50.1) == 0.0
    assert feeder.should_ping(last_progress=50.2, now=50.1)


@pytest.mark.parametrize("stall_s", [0.0, -1.0, float("nan"), float("inf")])
def test_a_stall_bound_that_is_not_a_positive_finite_number_is_rejected(stall_s: float) -> None:
    with pytest.raises(ValueError, match="stall_s"):
        WatchdogFeeder(stall_s)


def test_the_configured_stall_bound_makes_a_valid_feeder() -> None:
    assert WatchdogFeeder(WatchdogSection().stall_s).stall_s == WatchdogSection().stall_s


def test_a_hung_frame_loop_starves_the_watchdog_socket(notify_socket: NotifySocket) -> None:
    # The daemon's loop: ping only while the feeder says the frame loop is alive.
    notifier = notifier_for(notify_socket, **{WATCHDOG_USEC_ENV: "30000000"})
    feeder = WatchdogFeeder(stall_s=10.0)
    last_progress = 1000.0
    for now in (1000.0, 1015.0, 1030.0, 1045.0):
        if feeder.should_ping(last_progress, now):
            notifier.watchdog()
    assert notify_socket.receive() == "WATCHDOG=1"
    assert notify_socket.nothing_queued()
    notifier.close()


def test_a_service_started_as_systemd_does_gets_its_watchdog_and_hides_the_socket_from_children(
    notify_socket: NotifySocket,
) -> None:
    # systemd sets WATCHDOG_PID to the pid it forked; `exec` keeps the shell's pid ($$).
    script = (
        "import os, subprocess, sys\n"
        "from agent.device.systemd import Notifier\n"
        "notifier = Notifier()\n"
        "child = [sys.executable, '-c', 'import os; print(os.environ.get(\"NOTIFY_SOCKET\"))']\n"
        "inherited = subprocess.run(child, capture_output=True, text=True).stdout.strip()\n"
        "notifier.status(f'interval={notifier.watchdog_interval()} child_sees={inherited}')\n"
        "notifier.ready()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=notify_socket.name)
    env[WATCHDOG_USEC_ENV] = "8000000"
    done = subprocess.run(
        ["sh", "-c", f'WATCHDOG_PID=$$ exec "{sys.executable}" -c "$0"', script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RECEIVE_GUARD_S * 6,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert notify_socket.receive() == "STATUS=interval=4.0 child_sees=None"
    assert notify_socket.receive() == "READY=1"
