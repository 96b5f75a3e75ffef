"""``edge-agent top``: one device's live view in a terminal, refreshed in place; q or Ctrl-C quits.

The data comes from agent.fleet.top (payloads in, rows out); this module draws
the rows with rich and keeps the MQTT subscription alive: a broker that goes
away is retried, and with ``--config`` and the embedded broker the running
agent's address and password are read again (they change at every start).
Piped (stdout not a terminal), it prints the view once after a short window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator

import aiomqtt
from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agent.cli.connect import ConnectError, Connection, add_connection_arguments, connect, resolve
from agent.fleet import HEALTH_CAMERA, DeploymentRow, TopModel, TopRows
from agent.wire import CameraState, DeploymentState, DeviceState, SignalState

__all__ = ["add_top_parser", "render"]

EXIT_OK = 0
REFRESH_S = 0.5
"""Redraw period: telemetry comes every few seconds, a deployment's progress faster."""
RECONNECT_S = 2.0
"""Wait before connecting again to a broker that went away (an agent restarting)."""
SNAPSHOT_WINDOW_S = 6.0
"""Piped, the view is printed after this long: the retained state and one telemetry period (5 s)."""
BAR_WIDTH = 30
SNAPSHOT_WIDTH = 160
"""Columns of the printed view when piped (a terminal gives its own width)."""
STATE_STYLES: dict[str, str] = {
    SignalState.OK: "green", SignalState.WARN: "yellow", SignalState.ALARM: "bold red",
    DeviceState.ONLINE: "green", DeviceState.OFFLINE: "yellow", DeviceState.LOST: "bold red",
    CameraState.OPEN: "green", DeploymentState.FAILED: "bold red", DeploymentState.ROLLED_BACK: "yellow",
    DeploymentState.COMMITTED: "green",
    "warning": "yellow", "info": "dim",  # event severities (wire.Severity; ``alarm`` shares the signal's style)
}
NONE = "-"


def _clock(ts: float | None) -> str:
    return NONE if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _number(value: float | None, digits: int = 1) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def _styled(value: str) -> Text:
    return Text(value, style=STATE_STYLES.get(value, ""))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, expand=False,
                  pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column != "MESSAGE")
    return table


def _deployment(row: DeploymentRow | None) -> RenderableType:
    if row is None:
        return Text("deployment  none since this broker started", style="dim")
    line = Table.grid(padding=(0, 1))
    for _ in range(5):
        line.add_column(no_wrap=True)
    bar = ProgressBar(total=1.0, completed=row.progress, width=BAR_WIDTH)
    line.add_row(Text("deployment", style="bold"), f"{row.deployment_id}  {row.name} {row.version}",
                 _styled(row.state), bar, f"{row.progress * 100:3.0f}%" + ("" if row.in_progress else "  (done)"))
    if row.error:
        return Group(line, Text(f"  {row.error}", style="red"))
    return line


def render(rows: TopRows, *, broker: str, link: str, live: bool = True) -> RenderableType:
    """The whole view of ``rows``; ``link`` says how the connection to ``broker`` stands; ``live``: on a
    terminal that takes keys."""
    header = Text.assemble(
        ("edge-agent top  ", "bold"), (rows.device_id, "bold cyan"), "  ", _styled(rows.status),
        f"  agent {rows.agent_version or NONE}  up {_duration(rows.uptime_s)}  broker {broker} ",
        (f"({link})", "green" if link == "connected" else "yellow"), ("   q quits" if live else "", "dim"))
    cameras = _table("cameras", "CAMERA", "STATE", "FPS", "REOPENS", "LAST ERROR")
    for camera in rows.cameras:
        cameras.add_row(camera.name, _styled(camera.state), _number(camera.fps), str(camera.reopens),
                        camera.last_error or NONE)
    model = _table("model", "MODEL", "VERSION", "RUNTIME", "SINCE", "PREVIOUS", "INFER FPS", "FRAMES", "DROPPED")
    if rows.model is not None:
        m = rows.model
        model.add_row(m.name, Text(m.version, style="bold"), m.runtime, _clock(m.since), m.previous or NONE,
                      _number(rows.fps), str(rows.frames_processed or 0), str(rows.frames_dropped or 0))
    latency = _table("latency (ms)", "STAGE", "P50", "P95", "P99", "MAX", "FRAMES")
    for stage in rows.latency:
        s = stage.stats
        latency.add_row(stage.stage, _number(s.p50_ms), _number(s.p95_ms), _number(s.p99_ms), _number(s.max_ms),
                        str(s.count))
    signals = _table("signals", "SIGNAL", "STATE", "DETAIL")
    for signal_row in rows.signals:
        signals.add_row(signal_row.kind, _styled(signal_row.state), signal_row.detail or NONE)
    parts: list[RenderableType] = [header, cameras, model, latency, _deployment(rows.deployment), signals]
    if rows.counts:
        counts = _table("results", "CAMERA", "LABEL", "COUNT")
        for count in rows.counts:
            counts.add_row(count.camera, count.label, str(count.count))
        parts.append(counts)
    events = _table("events (newest first)", "TIME", "SEVERITY", "KIND", "MESSAGE")
    for event in rows.events:
        events.add_row(_clock(event.ts), _styled(event.severity), event.kind, event.message)
    parts.append(events)
    if rows.rejected:
        parts.append(Text(f"{rows.rejected} messages did not parse", style="yellow"))
    return Group(*parts)


class _Link:
    """The subscription: connected, or why not (shown in the header)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.state = "connecting"

    @property
    def broker(self) -> str:
        return self.connection.client.address.url


async def _follow(args: argparse.Namespace, model: TopModel, link: _Link) -> None:
    while True:
        try:
            async with link.connection.client.open() as mqtt:
                for topic in model.filters:
                    await mqtt.subscribe(topic, qos=0)
                link.state = "connected"
                async for message in mqtt.messages:
                    data = message.payload if isinstance(message.payload, (bytes, bytearray)) else b""
                    model.apply(str(message.topic), bytes(data))
        except aiomqtt.MqttError as exc:
            link.state = f"lost: {exc}; retrying"
        await asyncio.sleep(RECONNECT_S)
        try:  # the embedded broker has a new port and password after a restart
            link.connection = resolve(args)
        except ConnectError as exc:
            link.state = str(exc)


@contextlib.contextmanager
def _keys(on_quit: Callable[[], None]) -> Iterator[None]:
    """q on a terminal quits (cbreak mode: keys without Enter, Ctrl-C still a signal); restored after."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            on_quit()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _live(args: argparse.Namespace, connection: Connection, console: Console) -> int:
    from rich.live import Live

    assert connection.device is not None
    camera = connection.config.cameras[0].name if connection.config is not None else HEALTH_CAMERA
    model = TopModel(connection.client.prefix, connection.device, camera)
    link = _Link(connection)
    quit_ = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, quit_.set)
    follower = asyncio.create_task(_follow(args, model, link))

    def view() -> RenderableType:
        return render(model.rows(time.time()), broker=link.broker, link=link.state, live=console.is_terminal)

    try:
        if not console.is_terminal:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(quit_.wait(), SNAPSHOT_WINDOW_S)
            console.print(view())
            return EXIT_OK
        with _keys(quit_.set), Live(view(), console=console, screen=True, auto_refresh=False) as live:
            while not quit_.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(quit_.wait(), REFRESH_S)
                live.update(view(), refresh=True)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    from agent.core import configure_logging

    configure_logging("warning")
    connection = connect(args)
    console = Console()
    if not console.is_terminal:
        console = Console(width=SNAPSHOT_WIDTH)
    return asyncio.run(_live(args, connection, console))


def add_top_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("top", help="one device's live view: cameras, model, latency, deployment, signals, events")
    add_connection_arguments(top, groups=False, signing=False)
    top.set_defaults(handler=cmd_top)
