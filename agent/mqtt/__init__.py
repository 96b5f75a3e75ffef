"""The MQTT transport: the session, the outbox, the embedded broker and the command authority.

It knows no models or frames; the daemon gives it bytes and topics."""

from __future__ import annotations

from agent.mqtt.authority import CommandAuthority, NonceCache, load_command_key, sign_command
from agent.mqtt.broker import CONNECTION_FILE, PASSWORD_FILE, BrokerError, EmbeddedBroker, free_port
from agent.mqtt.errors import MqttError
from agent.mqtt.outbox import MemoryOutbox, Outbox, OutboxError, OutboxItem, SqliteOutbox
from agent.mqtt.session import MqttSession, SessionError, SessionState, SessionStatus
from agent.mqtt.settings import (
    SessionConfigError,
    check_certificate_identity,
    parse_broker_url,
    read_password,
    tls_parameters,
)

__all__ = [
    "CONNECTION_FILE",
    "PASSWORD_FILE",
    "BrokerError",
    "CommandAuthority",
    "EmbeddedBroker",
    "MemoryOutbox",
    "MqttError",
    "MqttSession",
    "NonceCache",
    "Outbox",
    "OutboxError",
    "OutboxItem",
    "SessionConfigError",
    "SessionError",
    "SessionState",
    "SessionStatus",
    "SqliteOutbox",
    "check_certificate_identity",
    "free_port",
    "load_command_key",
    "parse_broker_url",
    "read_password",
    "sign_command",
    "tls_parameters",
]
