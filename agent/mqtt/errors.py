"""The MQTT transport's error family: settings, the session, the outbox, the broker and the command authority."""

from __future__ import annotations

from agent.core import AgentError

__all__ = ["MqttError"]


class MqttError(AgentError):
    """The MQTT transport cannot do what was asked."""
