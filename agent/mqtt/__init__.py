"""The MQTT transport: topics, the wire schema, the session and the embedded broker.

It knows no models or frames; the daemon gives it bytes and topics.
"""

from agent.mqtt import signals  # noqa: F401  (registers the drift/bias/leak payloads and feedback)
from agent.mqtt.broker import BrokerError, EmbeddedBroker
from agent.mqtt.outbox import MemoryOutbox, Outbox, OutboxItem
from agent.mqtt.schema import CommandError, PayloadError, Sequencer, parse_command
from agent.mqtt.session import MqttSession, SessionError, SessionState, SessionStatus
from agent.mqtt.settings import SessionConfigError
from agent.mqtt.topics import TopicError, Topics

__all__ = [
    "BrokerError",
    "CommandError",
    "EmbeddedBroker",
    "MemoryOutbox",
    "MqttSession",
    "Outbox",
    "OutboxItem",
    "PayloadError",
    "Sequencer",
    "SessionConfigError",
    "SessionError",
    "SessionState",
    "SessionStatus",
    "TopicError",
    "Topics",
    "parse_command",
]
