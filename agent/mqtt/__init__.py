"""The MQTT transport: the session, the outbox, the embedded broker and the command authority.

It knows no models or frames; the daemon gives it bytes and topics.
"""

from agent.mqtt.broker import BrokerError, EmbeddedBroker
from agent.mqtt.errors import MqttError
from agent.mqtt.outbox import MemoryOutbox, Outbox, OutboxItem
from agent.mqtt.session import MqttSession, SessionError, SessionState, SessionStatus
from agent.mqtt.settings import SessionConfigError

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "MemoryOutbox",
    "MqttError",
    "MqttSession",
    "Outbox",
    "OutboxItem",
    "SessionConfigError",
    "SessionError",
    "SessionState",
    "SessionStatus",
]
