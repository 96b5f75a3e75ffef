"""The few lines ``edge-agent run`` prints for a person once the agent is ready, on a terminal only.

Under systemd or with stderr piped the log stays JSON lines and nothing else; on
a terminal the agent's start-up ends with what a newcomer needs next: the device
id, the camera, the model, the broker and the commands to try from a second
terminal (they take ``--config``: no address or password to copy).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.text import Text

from agent.mqtt import PASSWORD_FILE
from agent.vision import redact_uri

if TYPE_CHECKING:
    from agent.device import Agent

__all__ = ["command_name", "print_summary", "summary_rows"]


def command_name(argv0: str | None = None, cwd: Path | None = None) -> str:
    """How the person ran ``edge-agent``, to be typed again: ``edge-agent``, ``.venv/bin/edge-agent``, ..."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    cwd = Path.cwd() if cwd is None else cwd
    program, suffix = Path(argv0), ""
    if program.name == "edge-agent":
        found = shutil.which("edge-agent")
        if found and program.exists() and os.path.samefile(found, program):
            return "edge-agent"
    else:
        program, suffix = Path(sys.executable), " -m agent"
    absolute = Path(os.path.abspath(program))
    shown = absolute.relative_to(cwd) if absolute.is_relative_to(cwd) else absolute
    return f"{shown}{suffix}"


def camera_rows(agent: Agent) -> list[tuple[str, str]]:
    """One ``camera`` line per enabled camera: its name, URI (redacted), state and rate."""
    rows = []
    for camera in agent.cameras.active():
        stats = camera.stats()
        rows.append(("camera", f"{camera.name}: {redact_uri(camera.config.uri)}  "
                               f"({stats.state.name.lower()}, {stats.fps:.1f} fps)"))
    return rows or [("camera", "none enabled (add one: edge-agent cameras add --config ...)")]


def live_view_text(agent: Agent) -> str:
    """The live view's page (``[live_view]``), or why there is none."""
    url = agent.live_view.url if agent.live_view is not None else None
    if url is not None:
        return f"{url}  (each camera's stream, with boxes, zones and lines)"
    if agent.config.live_view.enabled:
        return f"not listening on {agent.config.live_view.listen} (live_view_not_listening in the log)"
    return "off ([live_view] enabled = false)"


def summary_rows(agent: Agent, config_path: Path, command: str) -> list[tuple[str, str]]:
    """``(label, text)`` lines of the summary."""
    config = agent.config
    serving = agent.slot.serving
    broker = agent.broker_url
    if config.mqtt.url == "embedded":
        broker += f"  (embedded; user edge-agent, password in {config.agent.state_dir / PASSWORD_FILE})"
    rows = [
        ("device", f"{agent.device_id}  (groups: {', '.join(config.agent.groups) or 'none'})"),
        *camera_rows(agent),
        ("model", f"{serving.name} {serving.version}  ({serving.runtime})" if serving else "none"),
        ("broker", broker),
        ("live", live_view_text(agent)),
        ("watch", f"{command} top --config {config_path}"),
        ("ask", f"{command} status --config {config_path}"),
    ]
    makefile = Path.cwd() / "Makefile"
    if makefile.is_file() and config_path.resolve() == (Path.cwd() / "config.toml").resolve():
        rows.append(("deploy", "make demo-deploy   (PP-OCRv6; make demo-rollback takes it back)"))
    return rows


def print_summary(agent: Agent, config_path: Path, stream: TextIO | None = None) -> None:
    """The summary on ``stream`` (stderr) when it is a terminal; long lines wrap, never cut (they are
    commands to copy)."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        return
    console = Console(file=stream)
    rows = summary_rows(agent, config_path, command_name())
    width = max(len(label) for label, _ in rows)
    console.rule("[bold]edge-agent is running[/bold] (Ctrl-C stops it)", align="left")
    for label, text in rows:
        console.print(Text.assemble(("  " + label.ljust(width), "bold"), "  ", text), soft_wrap=True)
    console.rule()
