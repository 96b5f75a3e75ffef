"""The models package's error family: manifests, bundles, the store, fetches, builds and deployments."""

from __future__ import annotations

from agent.core import AgentError

__all__ = ["ModelError"]


class ModelError(AgentError):
    """A model cannot be read, fetched, stored, built or deployed as asked."""
