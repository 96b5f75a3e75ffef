"""The fleet package's error family: the control link, rollouts, records and the fleet's own listeners."""

from __future__ import annotations

from agent.core import AgentError

__all__ = ["FleetError"]


class FleetError(AgentError):
    """The control plane or a fleet consumer cannot do what was asked."""
