"""``[mqtt]``: the broker, the credentials, the outbox; and the one check of a broker URL.

``parse_broker_url`` is the only place a broker URL is judged: the config checks
``[mqtt] url`` with it when the file is read, agent.mqtt turns it into an address
(and its refusal into a SessionConfigError) when it connects, and the control
plane when it is handed a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from agent.core.config.base import ConfigError, Section

__all__ = ["DEFAULT_BROKER_PORTS", "EMBEDDED", "BrokerAddress", "BrokerUrlError", "MqttSection", "parse_broker_url"]

EMBEDDED = "embedded"
"""``[mqtt] url`` of the agent's own broker (a mosquitto child process on loopback)."""
DEFAULT_BROKER_PORTS = {"mqtt": 1883, "mqtts": 8883}
"""The IANA ports of MQTT and MQTT over TLS, for a URL that names none."""


class BrokerUrlError(ConfigError):
    """A broker URL the agent cannot connect to; the message says what is wrong, never its credentials."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens, and whether it speaks TLS."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; credentials never go in the URL.

    ``embedded`` is refused here: it stands for the agent's own broker, whose address is
    known only once it has started.
    """
    if url == EMBEDDED:
        raise BrokerUrlError(f"url {EMBEDDED!r} must be resolved to the embedded broker's address first")
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_BROKER_PORTS or not parts.hostname:
        raise BrokerUrlError(
            f"url {url!r} is not {EMBEDDED!r} (the agent's own broker) and not mqtt://host[:port] "
            "or mqtts://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise BrokerUrlError(
            "url holds credentials; set [mqtt] username and put the password in password_file "
            "or the systemd credential mqtt-password, never in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(f"url {url!r} must not have a path, query or fragment")
    try:
        port = parts.port or DEFAULT_BROKER_PORTS[parts.scheme]
    except ValueError:
        raise BrokerUrlError(f"url {url!r} has an invalid port") from None
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts")


class MqttSection(Section):
    url: str = EMBEDDED
    """``embedded`` (a mosquitto child process on loopback), ``mqtt://host:port`` or ``mqtts://host:port``."""
    prefix: str = "edge"
    """First topic level of every topic."""
    protocol: Literal["3.1.1", "5"] = "5"
    """MQTT protocol version; the contract works on both (ids live in the payloads)."""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    """MQTT keepalive; the broker publishes the ``lost`` will about 1.5x this after a silent death."""
    username: str | None = None
    """Broker user name; the password never goes in this file (see ``password_file``)."""
    password_file: Path | None = None
    """Read at connect time; ``$CREDENTIALS_DIRECTORY/mqtt-password`` is used when unset and present."""
    ca_file: Path | None = None
    """CA bundle that signed the broker's certificate (mqtts://)."""
    cert_file: Path | None = None
    """Client certificate for mutual TLS."""
    key_file: Path | None = None
    """Private key of the client certificate."""
    reconnect_min_s: float = Field(default=0.5, gt=0)
    """First reconnect delay; it doubles (with jitter) up to ``reconnect_max_s``."""
    reconnect_max_s: float = Field(default=30.0, gt=0)
    """Cap of the reconnect delay."""
    outbox_max_messages: int = Field(default=10_000, ge=1, le=10_000_000)
    """Telemetry, events and replies kept (on disk, across restarts) while the broker is away;
    the oldest are dropped first and counted."""
    outbox_max_age_s: float = Field(default=86_400.0, gt=0)
    """Queued messages older than this are dropped unsent (and counted)."""
    embedded_binary: Path = Path("/usr/sbin/mosquitto")
    """The mosquitto binary that ``url = "embedded"`` starts."""
    embedded_port: int = Field(default=0, ge=0, le=65535)
    """0 picks a free port on loopback."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != EMBEDDED:
            parse_broker_url(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "password: not a setting: config.toml is world-readable; put the password in "
                "password_file or the systemd credential mqtt-password"
            )
        return data

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/"):
            raise ValueError(f"{value!r} is not a usable topic prefix")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self
