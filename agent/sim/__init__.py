"""The simulated fleet: devices that speak the MQTT contract (agent.wire) and nothing else of the agent."""

from __future__ import annotations

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
