"""The MQTT transport: the session, the outbox, the embedded broker, the command authority and a
small batching client (``fast``: the fleet consumer's and the simulated devices').

It knows no models or frames; the daemon gives it bytes and topics.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.mqtt.authority import CommandAuthority, NonceCache, load_command_key, sign_command
    from agent.mqtt.broker import CONNECTION_FILE, PASSWORD_FILE, BrokerError, EmbeddedBroker, free_port
    from agent.mqtt.errors import MqttError
    from agent.mqtt.fast import Batch, FastSubscriber, MqttFastError, Will, pack_connect, pack_publish, tls_context
    from agent.mqtt.outbox import MemoryOutbox, Outbox, OutboxItem
    from agent.mqtt.session import MqttSession, SessionError, SessionState, SessionStatus
    from agent.mqtt.settings import (
        SessionConfigError,
        check_certificate_identity,
        parse_broker_url,
        read_password,
        tls_parameters,
    )
    from agent.mqtt.sqlite_outbox import OutboxError, SqliteOutbox

__all__ = [
    "CONNECTION_FILE",
    "PASSWORD_FILE",
    "Batch",
    "BrokerError",
    "CommandAuthority",
    "EmbeddedBroker",
    "FastSubscriber",
    "MemoryOutbox",
    "MqttError",
    "MqttFastError",
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
    "Will",
    "check_certificate_identity",
    "free_port",
    "load_command_key",
    "pack_connect",
    "pack_publish",
    "parse_broker_url",
    "read_password",
    "sign_command",
    "tls_context",
    "tls_parameters",
]

_HOMES = {
    "Batch": "agent.mqtt.fast",
    "FastSubscriber": "agent.mqtt.fast",
    "MqttFastError": "agent.mqtt.fast",
    "Will": "agent.mqtt.fast",
    "pack_connect": "agent.mqtt.fast",
    "pack_publish": "agent.mqtt.fast",
    "tls_context": "agent.mqtt.fast",
    "BrokerError": "agent.mqtt.broker",
    "CONNECTION_FILE": "agent.mqtt.broker",
    "CommandAuthority": "agent.mqtt.authority",
    "EmbeddedBroker": "agent.mqtt.broker",
    "MemoryOutbox": "agent.mqtt.outbox",
    "MqttError": "agent.mqtt.errors",
    "MqttSession": "agent.mqtt.session",
    "NonceCache": "agent.mqtt.authority",
    "Outbox": "agent.mqtt.outbox",
    "OutboxError": "agent.mqtt.sqlite_outbox",
    "OutboxItem": "agent.mqtt.outbox",
    "PASSWORD_FILE": "agent.mqtt.broker",
    "SessionConfigError": "agent.mqtt.settings",
    "SessionError": "agent.mqtt.session",
    "SessionState": "agent.mqtt.session",
    "SessionStatus": "agent.mqtt.session",
    "SqliteOutbox": "agent.mqtt.sqlite_outbox",
    "check_certificate_identity": "agent.mqtt.settings",
    "free_port": "agent.mqtt.broker",
    "load_command_key": "agent.mqtt.authority",
    "parse_broker_url": "agent.mqtt.settings",
    "read_password": "agent.mqtt.settings",
    "sign_command": "agent.mqtt.authority",
    "tls_parameters": "agent.mqtt.settings",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
