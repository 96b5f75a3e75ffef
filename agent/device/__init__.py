"""The device: the daemon, the command router and handlers, the monitor wiring, systemd, the live view.

The door opens lazily (PEP 562): importing a module of this package (``agent.device.commands``,
which lower packages still import) must not load the whole daemon, which imports them in turn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.device.daemon import Agent, run_agent
    from agent.device.startup import StartupError

__all__ = ["Agent", "StartupError", "run_agent"]

_HOMES = {"Agent": "agent.device.daemon", "run_agent": "agent.device.daemon", "StartupError": "agent.device.startup"}
"""Where each name of the door is defined."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
