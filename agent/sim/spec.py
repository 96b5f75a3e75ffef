"""What a simulated fleet is asked to be: the devices, their broker and topics, how they fail.

Apart from agent.sim.simulate (which runs the fleet) so that agent.sim.device, one simulated
device, reads the spec without importing the runner that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.core import AgentError, MqttSection
from agent.wire import Topics

__all__ = ["SimError", "SimSpec"]


class SimError(AgentError, RuntimeError):
    """The simulated fleet cannot run as asked; the message says why."""


@dataclass(frozen=True)
class SimSpec:
    url: str
    devices: int
    group: str = "sim"
    prefix: str = "edge"
    id_prefix: str = "sim"
    model_name: str = "text-det"
    model_version: str = "1.0.0"
    fail_rate: float = 0.0
    fail_mode: Literal["probation", "download", "shadow"] = "probation"
    """How a failing device fails: in probation (rolled back), at download, or in shadow (a shadow deploy
    agrees 0 and is discarded; a plain deploy of it serves and commits)."""
    slow_deploy_s: float = 0.5
    """Seconds from received to active."""
    probation_s: float = 1.0
    """Seconds from active to committed (or rolled back)."""
    shadow_agreement: float = 0.98
    """The agreement a shadow deploy reports on a device that does not fail it (the gate's mean per-frame
    box F1; its text agreement too)."""
    shadow_s: float = 1.0
    """Seconds a shadow run lasts before it is decided (the deploy's ``duration_s`` when shorter)."""
    period_s: float = 5.0
    """Telemetry period (health, latency, drift, bias, leak)."""
    alarm_rate: float = 0.0
    """Share of devices (by hash) whose drift is in alarm."""
    transport: Literal["session", "fast"] = "session"
    """Each device's MQTT connection: the agent's own ``MqttSession`` (aiomqtt on paho, with its outbox),
    or ``fast`` (agent.sim.fastsession: the same wire at a fraction of the CPU per message, no outbox)."""
    state_dir: Path | None = None
    """Journals live under it; a temporary folder (removed at the end) when None."""
    shard: int = 0
    shards: int = 1
    """This process simulates every ``shards``-th device of the fleet, from the ``shard``-th on
    (``SimProcesses`` starts one process per shard)."""

    def __post_init__(self) -> None:
        MqttSection(url=self.url, prefix=self.prefix)
        Topics(self.prefix, f"{self.id_prefix}-0")
        Topics(self.prefix, self.group)
        if self.devices < 1:
            raise SimError(f"devices must be at least 1, got {self.devices}")
        for name in ("fail_rate", "alarm_rate", "shadow_agreement"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise SimError(f"{name.replace('_', '-')} must be within 0..1, got {value}")
        for name in ("slow_deploy_s", "probation_s", "shadow_s"):
            if getattr(self, name) < 0:
                raise SimError(f"{name} must not be negative")
        if self.transport not in ("session", "fast"):
            raise SimError(f"transport must be session or fast, got {self.transport!r}")
        if self.period_s <= 0:
            raise SimError(f"period must be above 0 s, got {self.period_s}")
        if not 0 <= self.shard < self.shards:
            raise SimError(f"shard must be within 0..{self.shards - 1}, got {self.shard}")
