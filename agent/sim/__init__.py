"""The simulated fleet: devices that speak the MQTT contract (agent.wire) and nothing else of the agent.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.sim.device import SimDevice
    from agent.sim.simulate import SimFleet, SimProcesses, auto_processes, device_ids
    from agent.sim.spec import SimError, SimSpec

__all__ = [
    "SimDevice",
    "SimError",
    "SimFleet",
    "SimProcesses",
    "SimSpec",
    "auto_processes",
    "device_ids",
]

_HOMES = {
    "SimDevice": "agent.sim.device",
    "SimError": "agent.sim.spec",
    "SimFleet": "agent.sim.simulate",
    "SimProcesses": "agent.sim.simulate",
    "SimSpec": "agent.sim.spec",
    "auto_processes": "agent.sim.simulate",
    "device_ids": "agent.sim.simulate",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
