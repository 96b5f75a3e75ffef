"""The control plane's side of the wire: send a command to a device or group and wait for replies.

Talks to agents only through the contract in agent.wire: commands on
``<prefix>/<id>/cmd/<name>`` (or ``<prefix>/group/<g>/cmd/<name>``), replies on
``<prefix>/<id>/reply`` matched by the command's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.fleet.errors import FleetError
from agent.mqtt import parse_broker_url, sign_command
from agent.wire import DeploymentPayload, ReplyPayload, decode_payload

__all__ = ["ControlClient", "ControlError", "NoReplyError", "Reply", "new_command_id"]

DEFAULT_TIMEOUT_S = 300.0


class ControlError(FleetError, RuntimeError):
    """The command could not be sent or no reply came in time."""


class NoReplyError(ControlError):
    """The command was sent and the device did not answer in time."""


@dataclass(frozen=True)
class Reply:
    device_id: str
    payload: ReplyPayload


def new_command_id() -> str:
    return uuid.uuid4().hex


class ControlClient:
    """One MQTT connection for the control plane (anonymous or user/password, mqtt:// or mqtts://)."""

    def __init__(self, url: str, prefix: str = "edge", *, username: str | None = None,
                 password: str | None = None, client_id: str | None = None,
                 signing_key: Ed25519PrivateKey | None = None, tls: aiomqtt.TLSParameters | None = None) -> None:
        if url == "embedded":
            raise ControlError("the control plane needs the broker's URL (mqtt://host:port), not 'embedded'")
        self.address = parse_broker_url(url)
        self.prefix = prefix
        self.username = username
        self.password = password
        self.client_id = client_id or f"edge-control-{uuid.uuid4().hex[:8]}"
        self._url = url
        self.signing_key = signing_key
        """Sign every command (agents configured with ``[commands] public_key_file`` require it)."""
        self.tls = tls
        """TLS for mqtts:// (a private CA, a client certificate); None: the system CAs."""

    def open(self) -> aiomqtt.Client:
        """A new MQTT 5 client with this control plane's address and credentials (not yet connected)."""
        tls = (self.tls or aiomqtt.TLSParameters()) if self.address.tls else None
        return aiomqtt.Client(self.address.host, self.address.port, identifier=self.client_id,
                              username=self.username, password=self.password, tls_params=tls,
                              protocol=aiomqtt.ProtocolVersion.V5)

    def command_topic(self, name: str, *, device: str | None = None, group: str | None = None) -> str:
        if (device is None) == (group is None):
            raise ControlError("name exactly one of a device or a group")
        return f"{self.prefix}/group/{group}/cmd/{name}" if group else f"{self.prefix}/{device}/cmd/{name}"

    async def send(
        self,
        name: str,
        body: dict[str, Any],
        *,
        device: str | None = None,
        group: str | None = None,
        expect: int | None = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_progress: Callable[[str, DeploymentPayload], None] | None = None,
    ) -> list[Reply]:
        """Publish the command and collect replies carrying its id.

        ``expect``: stop after that many replies (None: wait the whole timeout, for groups).
        ``on_progress`` sees the retained deployment topic of the devices as it changes.
        """
        body = dict(body)
        body.setdefault("id", new_command_id())
        topic = self.command_topic(name, device=device, group=group)
        if self.signing_key is not None:
            body = sign_command(body, self.signing_key, topic=topic)
        replies: list[Reply] = []
        try:
            async with self.open() as client:
                await client.subscribe(f"{self.prefix}/+/reply", qos=1)
                if on_progress is not None:
                    await client.subscribe(f"{self.prefix}/+/deployment", qos=1)
                await client.publish(topic, json.dumps(body).encode(), qos=1)
                deadline = asyncio.get_running_loop().time() + timeout_s
                messages = aiter(client.messages)
                while expect is None or len(replies) < expect:
                    remaining = deadline - asyncio.get_running_loop().time()
                    try:
                        message = await asyncio.wait_for(anext(messages), timeout=max(remaining, 0.001))
                    except asyncio.TimeoutError:
                        if expect is None:
                            break
                        raise NoReplyError(
                            f"no reply to {name} {body['id']} within {timeout_s:.0f}s "
                            f"({len(replies)} of {expect})") from None
                    reply = self._handle(message, body["id"], on_progress)
                    if reply is not None:
                        replies.append(reply)
        except aiomqtt.MqttError as exc:
            raise ControlError(f"broker {self._url}: {exc}") from exc
        return replies

    def _handle(self, message: aiomqtt.Message, command_id: str,
                on_progress: Callable[[str, DeploymentPayload], None] | None) -> Reply | None:
        parts = str(message.topic).split("/")
        device = parts[-2] if len(parts) >= 2 else "?"
        data = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
        if parts[-1] == "deployment":
            if on_progress is not None and data:
                with contextlib.suppress(ValueError):
                    on_progress(device, decode_payload(DeploymentPayload, data))
            return None
        try:
            reply = decode_payload(ReplyPayload, data)
        except ValueError:
            return None
        return Reply(device, reply) if reply.id == command_id else None
