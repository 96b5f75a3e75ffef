"""A simulated device's MQTT connection on the batching client (agent.mqtt.FastSubscriber).

``SimSpec.transport = "fast"`` (``fleet simulate --transport fast``). The default transport
is the agent's own ``MqttSession`` (aiomqtt on paho): the real protocol code, which costs
about 0.24 ms of CPU per telemetry message in a simulator process (docs/fleet.md), so 10,000
devices at the 5 s period need more than two cores of their own. This one speaks the same
wire with less per message: one ``asyncio.Protocol`` per device, each PUBLISH packed by hand
and written to the socket, the commands parsed in batches.

What it keeps of the session: the last will (``lost``, retained), a clean start with the
device's command subscriptions, ``on_connect`` after every (re)connection (the device
publishes its retained state again), reconnects with a doubling backoff, and ``state``.
What it does not: no outbox (a message published while disconnected is dropped and counted
in ``dropped``; the retained state is published again on the next connection), no QoS 1
retry (the broker's PUBACK is read and dropped, as the consumer does), MQTT 5 only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from agent.core import parse_broker_url
from agent.mqtt import Batch, FastSubscriber, MqttFastError, Will, tls_context
from agent.wire import SessionState

__all__ = ["FastSession"]

log = structlog.get_logger(__name__)

COMMAND_QOS = 1


class FastSession:
    """One simulated device's connection: ``run()`` until ``stop()``, reconnecting in between."""

    def __init__(self, url: str, client_id: str, *, will: Will, subscriptions: list[str],
                 on_message: Callable[[str, bytes], Awaitable[None]], on_connect: Callable[[], Awaitable[None]],
                 keepalive_s: int, reconnect_min_s: float, reconnect_max_s: float) -> None:
        address = parse_broker_url(url)
        self.host, self.port, self.tls = address.host, address.port, tls_context(address.tls)
        self.client_id = client_id
        self.will = will
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connect = on_connect
        self.keepalive_s = keepalive_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.state = SessionState.CONNECTING
        self.dropped = 0
        """Messages published while not connected (dropped: there is no outbox)."""
        self._client: FastSubscriber | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random(client_id)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        client = self._client
        if client is None or not client.connected:
            self.dropped += 1
            return
        try:
            client.publish(topic, payload, qos, retain=retain)
        except MqttFastError:
            self.dropped += 1

    async def run(self) -> None:
        delay = self.reconnect_min_s
        while not self._stopping:
            client = FastSubscriber(self.host, self.port, self.client_id, self._batch, tls=self.tls,
                                    keepalive_s=self.keepalive_s, will=self.will)
            try:
                await client.connect()
                self._client = client
                await client.subscribe([(f, COMMAND_QOS) for f in self.subscriptions])
                self.state = SessionState.CONNECTED
                delay = self.reconnect_min_s
                await self.on_connect()
                await client.run()
            except MqttFastError as exc:
                if not self._stopping:
                    log.info("sim_connection_lost", device=self.client_id, error=str(exc))
            finally:
                self._client = None
                client.close()
            if self._stopping:
                break
            self.state = SessionState.BACKING_OFF
            # jittered, so that a broker restart does not bring every device back in the same millisecond
            await asyncio.sleep(delay * (0.5 + self._random.random()))
            delay = min(delay * 2, self.reconnect_max_s)
        self.state = SessionState.STOPPED

    async def stop(self) -> None:
        """Disconnect cleanly (no will); the commands still running are cancelled."""
        self._stopping = True
        client = self._client
        if client is not None:
            client.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dropped:
            log.info("sim_messages_dropped", device=self.client_id, dropped=self.dropped)

    def _batch(self, batch: Batch) -> None:
        for topic, payload in batch:
            task = asyncio.ensure_future(self.on_message(topic, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
