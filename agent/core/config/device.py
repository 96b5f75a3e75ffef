"""``[agent]``: who this device is (its id and groups), where it keeps its state, how it stops."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from agent.core.config.base import Section
from agent.core.names import TopicError, check_device_id

__all__ = ["AgentSection"]


class AgentSection(Section):
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    groups: tuple[str, ...] = ()
    """Groups this device belongs to: it also obeys ``<prefix>/group/<g>/cmd/...``."""
    state_dir: Path = Path("/var/lib/edge-agent")
    """Holds the engine store, the command-id journal and the outbox."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged (JSON lines off a TTY, console lines on one)."""
    stop_timeout_s: float = Field(default=10.0, gt=0)
    """Upper bound for a clean stop after SIGTERM/SIGINT."""
    crash_loop_starts: int = Field(default=3, ge=1, le=100)
    """Failed starts in a row with one model version before that version is quarantined and
    ``previous`` served. Below the unit's ``StartLimitBurst=10`` so that systemd is still
    restarting when the agent falls back; above 1 so that one power cut is not a verdict."""
    crash_loop_window_s: float = Field(default=120.0, gt=0)
    """An abnormal exit this soon after READY still counts as a failed start: a model that
    dies on its first minutes of traffic is as bad as one that never starts."""

    @field_validator("device_id", "groups")
    @classmethod
    def _topic_safe(cls, value: Any) -> Any:
        for name in (value,) if isinstance(value, str) else value:
            try:
                check_device_id(name, "id")
            except TopicError as exc:
                raise ValueError(str(exc)) from None
        return value
