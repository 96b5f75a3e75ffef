"""The device package's error family: commands, start-up, systemd and the live view."""

from __future__ import annotations

from agent.core import AgentError

__all__ = ["DeviceError"]


class DeviceError(AgentError):
    """The device cannot do what was asked."""
