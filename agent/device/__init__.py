"""The device: the daemon, the command router and handlers, the monitor wiring, systemd, the live view.

The door opens lazily (PEP 562): importing a module of this package (``agent.device.commands``,
which lower packages still import) must not load the whole daemon, which imports them in turn.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
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

_HOMES = {
    "Agent": "agent.device.daemon",
    "BOUNDARY": "agent.device.liveview",
    "LiveView": "agent.device.liveview",
    "StartupError": "agent.device.startup",
    "annotate": "agent.device.liveview",
    "run_agent": "agent.device.daemon",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
