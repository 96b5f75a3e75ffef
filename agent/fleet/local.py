"""Where the control plane finds an agent from its config file: the broker, credentials, device id.

``edge-agent deploy|rollback|status|ping|top --config config.toml`` reads the
device id and the ``[mqtt]`` section of the agent's own config. For a broker of
its own (``mqtt://`` or ``mqtts://``) that is the URL, user name, password
(``password_file`` or the systemd credential) and TLS files. For the embedded
broker (``url = "embedded"``) the port and password change at every start, so it
reads what the running agent wrote to its state folder (agent.mqtt.broker:
``mqtt-embedded.json`` and ``mqtt-embedded-password``, mode 0600): no file means
no agent is running with that config; a file whose broker does not answer is
left from an agent that did not stop cleanly.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import AgentConfig
from agent.fleet.control import ControlClient, ControlError
from agent.mqtt import CONNECTION_FILE, SessionConfigError, parse_broker_url, read_password, tls_parameters

__all__ = ["LocalAgentError", "LocalTarget", "local_target"]

REACH_TIMEOUT_S = 2.0
"""A loopback broker that accepts no TCP connection within this is not running."""


class LocalAgentError(ControlError):
    """The config names no agent the control plane can reach; the message says why and what to do."""


@dataclass(frozen=True)
class LocalTarget:
    """One agent as its config file describes it: enough to open a ``ControlClient``."""

    device_id: str
    prefix: str
    url: str
    username: str | None = None
    password: str | None = None
    tls: aiomqtt.TLSParameters | None = None
    source: str = ""
    """Where the broker's address came from (the config, or the embedded broker's file)."""

    def client(self, *, prefix: str | None = None, signing_key: Ed25519PrivateKey | None = None) -> ControlClient:
        """A control client for this agent's broker (``prefix`` overrides the config's)."""
        return ControlClient(self.url, prefix or self.prefix, username=self.username, password=self.password,
                             tls=self.tls, signing_key=signing_key)


def _embedded(config: AgentConfig) -> LocalTarget:
    state = config.agent.state_dir
    path = state / CONNECTION_FILE
    try:
        connection = json.loads(path.read_text(encoding="utf-8"))
        url, username = str(connection["url"]), connection.get("username")
        password_file = Path(connection["password_file"])
        password = password_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise LocalAgentError(
            f"no agent is running with this config: {exc.filename} does not exist (the agent writes it "
            "when its embedded broker starts and removes it when it stops); start one with "
            "`edge-agent run --config ...` (`make run`)") from None
    except PermissionError as exc:
        raise LocalAgentError(f"cannot read {exc.filename}: it is the agent's (mode 0600); run this as "
                              "the agent's user (sudo -u edge-agent ...) or root") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalAgentError(f"{path} is not the embedded broker's connection file: {exc!r}") from None
    try:
        address = parse_broker_url(url)
    except SessionConfigError as exc:
        raise LocalAgentError(f"{path}: {exc}") from None
    try:
        socket.create_connection((address.host, address.port), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise LocalAgentError(
            f"{path} is stale: its broker {url} does not answer ({exc.strerror or exc}); the agent that wrote "
            "it has stopped without removing it. Start the agent again (`edge-agent run --config ...`)") from None
    return LocalTarget(config.agent.device_id, config.mqtt.prefix, url,
                       username=username if isinstance(username, str) else None, password=password,
                       source=str(path))


def local_target(config: AgentConfig, config_path: Path) -> LocalTarget:
    """The agent that ``config`` (read from ``config_path``) describes, and how to reach its broker."""
    mqtt = config.mqtt
    if mqtt.url == "embedded":
        return _embedded(config)
    try:
        address = parse_broker_url(mqtt.url)
        password = read_password(mqtt)
        tls = tls_parameters(mqtt, address)
    except SessionConfigError as exc:
        raise LocalAgentError(f"{config_path}: [mqtt] {exc}") from None
    return LocalTarget(config.agent.device_id, mqtt.prefix, mqtt.url, username=mqtt.username,
                       password=password, tls=tls, source=str(config_path))
