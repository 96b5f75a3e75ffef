"""A long-lived control-plane connection that keeps a ``FleetView`` of the devices up to date.

``ControlClient.send()`` opens a connection per command, which is right for one
device; a rollout talks to hundreds of devices for many minutes, so it holds one
``FleetLink``: subscribed to the retained state of every device (discovery comes
for free: the broker sends the retained ``status``, ``model`` and ``deployment``
of every device on subscribe), to replies and events, and publishing commands.
``sync()`` is a round trip through the broker: once it returns, the retained
messages sent for the earlier subscriptions have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import aiomqtt
import structlog

from agent.fleet.control import ControlClient, ControlError
from agent.fleet.view import FleetView, Message
from agent.wire import ReplyPayload

__all__ = ["CONTROL_FILTERS", "RETAINED_SUFFIXES", "SUBSCRIBE_QOS", "SYNC_TIMEOUT_S", "FleetLink", "LinkError"]

log = structlog.get_logger(__name__)

SYNC_TIMEOUT_S = 30.0
"""How long a round trip through the broker may take."""
SYNC_QUIET_S = 0.3
"""After the round trip, wait until no retained message came for this long (clustered brokers reorder)."""
SYNC_ROOT = "_edge-control"
CONTROL_FILTERS = ("status", "model", "deployment", "reply", "events",
                   "telemetry/drift", "telemetry/bias", "telemetry/leak")
"""Topic suffixes a control plane follows, under ``<prefix>/+/``: state, answers and alarms."""
COMMAND_QOS = 1
"""Commands are published at QoS 1 (the agents' journal makes a redelivery harmless)."""
SUBSCRIBE_QOS = 0
"""What the link reads, it reads at QoS 0. A broker bounds the QoS 1 messages it queues for one
client (mosquitto: ``max_queued_messages``, 1000, plus 20 in flight) and drops the rest, which
cuts off the retained state of a big fleet on subscribe and the state changes of a big wave;
QoS 0 messages to a connected client are not bounded that way, and QoS 1 would buy nothing
more on a clean session that ends with its connection."""
RETAINED_SUFFIXES = ("status", "model", "deployment")
"""The devices' retained state topics."""


class LinkError(ControlError):
    """The control connection broke or the broker did not answer in time."""


class FleetLink:
    """``async with FleetLink(control) as link``: connected, subscribed, retained state read."""

    def __init__(self, control: ControlClient, suffixes: Sequence[str] = CONTROL_FILTERS,
                 on_message: Callable[[Message], None] | None = None) -> None:
        self.control = control
        self.view = FleetView(control.prefix)
        self.replies: dict[tuple[str, str], ReplyPayload] = {}
        """Replies by ``(device id, command id)``: the device is the one whose reply topic it came on,
        so a device answering with another device's command id answers nothing (see ``reply``)."""
        self.changed = asyncio.Event()
        self._filters = [f"{control.prefix}/+/{suffix}" for suffix in suffixes]
        self._retained_filters = [f"{control.prefix}/+/{suffix}" for suffix in suffixes
                                  if suffix in RETAINED_SUFFIXES]
        self._sync_topic = f"{SYNC_ROOT}/{control.client_id}/sync"
        self._synced = asyncio.Event()
        self.on_message = on_message
        """Called for every parsed device message (a rollout follows its devices through it)."""
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._last_retained = 0.0

    async def __aenter__(self) -> FleetLink:
        self._client = self.control.open()
        try:
            await self._client.__aenter__()
            for topic_filter in [*self._filters, self._sync_topic]:
                await self._client.subscribe(topic_filter, qos=SUBSCRIBE_QOS)
        except aiomqtt.MqttError as exc:
            raise LinkError(f"broker {self.control.address.url}: {exc}") from exc
        self._reader = asyncio.create_task(self._read(self._client), name="fleet-link")
        await self.sync()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in client.messages:
                topic = message.topic.value
                data = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
                if message.retain:
                    self._last_retained = loop.time()
                if topic == self._sync_topic:
                    self._synced.set()
                    continue
                parsed = self.view.apply(topic, data)
                if parsed is None:
                    continue
                if parsed.suffix == "reply" and isinstance(parsed.data, ReplyPayload) and parsed.data.id:
                    self.replies[(parsed.device_id, parsed.data.id)] = parsed.data
                if self.on_message is not None:
                    self.on_message(parsed)
                self.changed.set()
        except aiomqtt.MqttError as exc:
            self._error = exc
            log.error("control_link_lost", error=str(exc))
            self.changed.set()

    def reply(self, device: str, command_id: str) -> ReplyPayload | None:
        """The reply to command ``command_id`` that came on ``device``'s own reply topic, if any."""
        return self.replies.get((device, command_id))

    async def refresh(self) -> bool:
        """Have the broker send the retained state again (subscribing anew to a filter replaces the
        subscription and sends its retained messages), then a round trip: a safety net for a state
        change lost on the way.

        False when the broker did not answer in time while the connection stayed up (a broker busy
        with a big fleet, or this link behind on what it reads): being a safety net, it is logged and
        tried again later, and what the link has read stands. A broken connection raises LinkError."""
        assert self._client is not None
        try:
            for topic_filter in self._retained_filters:
                await self._client.subscribe(topic_filter, qos=SUBSCRIBE_QOS)
            await self.sync()
        except (aiomqtt.MqttError, LinkError) as exc:
            self.check()
            log.warning("control_refresh_late", broker=self.control.address.url, error=str(exc))
            return False
        return True

    def check(self) -> None:
        """Raise LinkError when the connection has broken."""
        if self._error is not None:
            raise LinkError(f"broker {self.control.address.url}: connection lost: {self._error}")

    async def sync(self) -> None:
        """Round trip through the broker, then a short quiet period."""
        assert self._client is not None
        self._synced.clear()
        loop = asyncio.get_running_loop()
        await self.publish(self._sync_topic, b"")
        try:
            await asyncio.wait_for(self._synced.wait(), SYNC_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise LinkError(f"broker {self.control.address.url}: no round trip in {SYNC_TIMEOUT_S:.0f}s") from None
        while loop.time() - self._last_retained < SYNC_QUIET_S:
            await asyncio.sleep(SYNC_QUIET_S)
        self.check()

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        self.check()
        try:
            await self._client.publish(topic, payload, qos=COMMAND_QOS)
        except aiomqtt.MqttError as exc:
            raise LinkError(f"broker {self.control.address.url}: publish to {topic}: {exc}") from exc

    async def command(self, name: str, body: dict[str, Any], device: str) -> None:
        """Publish command ``name`` (its body carries the id) to one device."""
        await self.publish(self.control.command_topic(name, device=device), json.dumps(body).encode())

    async def wait_changed(self, timeout: float) -> None:
        """Until a message arrived or ``timeout`` passed; raises LinkError when the link broke."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
        self.check()
