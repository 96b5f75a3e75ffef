"""The vision package's error family: frame sources, cameras and transforms."""

from __future__ import annotations

from agent.core import AgentError

__all__ = ["VisionError"]


class VisionError(AgentError):
    """A source, a camera or a transform cannot be used as asked."""
