"""The device: the daemon, the command router and handlers, the monitor wiring, systemd, the live view.

The door opens lazily (PEP 562): importing a module of this package (``agent.device.commands``,
which lower packages still import) must not load the whole daemon, which imports them in turn."""

from __future__ import annotations

from agent.device.daemon import Agent, run_agent
from agent.device.liveview import BOUNDARY, LiveView, annotate
from agent.device.startup import StartupError

__all__ = [
    "BOUNDARY",
    "Agent",
    "LiveView",
    "StartupError",
    "annotate",
    "run_agent",
]
