"""The monitor package's error family: references, bias settings and the egress policy."""

from __future__ import annotations

from agent.core import AgentError

__all__ = ["MonitorError"]


class MonitorError(AgentError):
    """A monitor cannot be set up or refuses what it was given."""
