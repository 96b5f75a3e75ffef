"""The connection to the broker: reconnects, resubscribes, and keeps what must be sent.

aiomqtt gives one connection per ``async with Client(...)``; this module wraps it in
a reconnect loop with an explicit state machine::

    DISCONNECTED -> CONNECTING -> CONNECTED -> BACKING_OFF -> CONNECTING -> ...
                               \\-> REFUSED (CONNACK said no: bad credentials, ...)
    any state -> STOPPED (stop() or run() ends)

Every publish goes through the session, never straight to the socket: retained
state is remembered (latest payload per topic) and sent again on every connect,
so a broker that lost it (restart without persistence) gets it back; everything
else waits in an ``Outbox`` that one sender drains in order while connected and
only forgets once the broker has acknowledged it. A clean ``stop()`` flushes,
then disconnects with DISCONNECT, so the broker does not publish the will.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttConnectError

from agent.core import Backoff, MqttSection
from agent.mqtt.errors import MqttError
from agent.mqtt.outbox import MemoryOutbox, Outbox
from agent.mqtt.settings import parse_broker_url, read_password, tls_parameters
from agent.wire import SessionState

__all__ = [
    "OPERATION_TIMEOUT_S",
    "SEND_BATCH",
    "STOP_FLUSH_TIMEOUT_S",
    "ConnectHandler",
    "MessageHandler",
    "MqttSession",
    "SessionError",
    "SessionState",
    "SessionStatus",
    "SessionStoppedError",
]

log = structlog.get_logger(__name__)

OPERATION_TIMEOUT_S = 10.0
"""How long a CONNACK, SUBACK or PUBACK may take before the connection counts as broken."""
SEND_BATCH = 50
"""Outbox messages in flight at once (QoS 1 messages awaiting PUBACK)."""
STOP_FLUSH_TIMEOUT_S = 5.0
"""How long a clean stop waits for queued messages to be acknowledged."""
LIVE_PUBLISH_TIMEOUT_S = 1.0
"""``publish_now`` at QoS 1 waits this long for PUBACK: a live message late by more is dropped."""
MAX_ERROR_CHAIN = 3
COMMAND_QOS = 1
WILL_QOS = 1

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ConnectHandler = Callable[[], Awaitable[None]]


class SessionError(MqttError):
    """The MQTT session cannot do what was asked."""


class SessionStoppedError(SessionError):
    """A publish or run() on a session that has stopped."""


@dataclass(frozen=True)
class SessionStatus:
    state: SessionState
    reconnects: int
    """Connections made after the first one."""
    last_error: str | None
    outbox_depth: int
    dropped: int
    connected_since: float | None
    """Unix time of the current connection; None while not connected."""


def describe_error(exc: BaseException) -> str:
    """The error and its causes on one line: ``MqttError: ... <- MqttCodeError: ...``."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < MAX_ERROR_CHAIN:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


class MqttSession:
    """One device's connection to its broker; ``run()`` until ``stop()``.

    ``will`` is ``(topic, payload)``, published retained by the broker when the
    connection dies without DISCONNECT. ``on_message(topic, payload)`` is awaited
    for each message of ``subscriptions``, one at a time: it should hand long work
    to a task. ``on_connect()`` is awaited after each (re)connect and subscribe.
    ``url`` overrides ``settings.url`` (the daemon passes the embedded broker's).
    """

    def __init__(
        self,
        settings: MqttSection,
        *,
        client_id: str,
        will: tuple[str, bytes],
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        on_connect: ConnectHandler | None = None,
        url: str | None = None,
        outbox: Outbox | None = None,
        environ: Mapping[str, str] | None = None,
        flush_timeout_s: float = STOP_FLUSH_TIMEOUT_S,
    ) -> None:
        self._settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self._address = parse_broker_url(url or settings.url)
        self._tls = tls_parameters(settings, self._address)
        read_password(settings, self._environ)
        self._client_id = client_id
        self._will = aiomqtt.Will(will[0], will[1], qos=WILL_QOS, retain=True)
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._on_connect = on_connect
        self._outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self._flush_timeout_s = flush_timeout_s
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._unsent_retained: set[str] = set()
        self._overflowing = False
        """Set at the first drop; cleared once the outbox drains, so each overflow logs once."""
        self._state = SessionState.DISCONNECTED
        self._connections = 0
        self._last_error: str | None = None
        self._connected_since: float | None = None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._live: aiomqtt.Client | None = None
        """The connected client, for ``publish_now``; None while not connected."""

    # --- what callers use ------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    def status(self) -> SessionStatus:
        return SessionStatus(
            state=self._state,
            reconnects=max(self._connections - 1, 0),
            last_error=self._last_error,
            outbox_depth=self._outbox.depth,
            dropped=self._outbox.dropped,
            connected_since=self._connected_since,
        )

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; it is sent as soon as (and as often as) the connection allows.

        Retained: the latest payload per topic is kept and re-sent on every connect.
        Not retained: appended to the outbox, sent in order, dropped oldest first when full.
        Call from the event loop's thread.
        """
        if self._state is SessionState.STOPPED:
            raise SessionStoppedError(f"session stopped; cannot publish to {topic!r}")
        if not topic or any(c in topic for c in "+#\0"):
            raise SessionError(f"cannot publish to {topic!r}: empty or has a wildcard")
        if qos not in (0, 1, 2):
            raise SessionError(f"qos must be 0, 1 or 2, got {qos!r}")
        if retain:
            self._retained[topic] = (payload, qos)
            self._unsent_retained.add(topic)
        else:
            dropped = self._outbox.dropped
            self._outbox.put(topic, payload, qos)
            if self._outbox.dropped > dropped and not self._overflowing:
                self._overflowing = True
                log.warning("mqtt_outbox_overflow", depth=self._outbox.depth, dropped=dropped + 1)
        self._wake.set()

    async def publish_now(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        """Send a message that is worth nothing late (a camera's results) at once, never queued:
        False when the broker is away (or the send failed), for the caller to count as dropped.
        Call from the event loop's thread."""
        client = self._live
        if client is None or self._state is not SessionState.CONNECTED:
            return False
        try:
            await client.publish(topic, payload, qos=qos, timeout=LIVE_PUBLISH_TIMEOUT_S)
        except (aiomqtt.MqttError, OSError, ValueError):  # the connection is going: the reader sees it
            return False
        return True

    async def run(self) -> None:
        """Connect, serve and reconnect until ``stop()``; then the state is STOPPED."""
        if self._run_task is not None:
            raise SessionError("run() was already called on this session")
        self._run_task = asyncio.current_task()
        backoff = Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s)
        try:
            while not self._stop_requested.is_set():
                refused = await self._attempt(backoff)
                if self._stop_requested.is_set():
                    break
                if refused:
                    delay = self._settings.reconnect_max_s
                else:
                    delay = backoff.next_delay()
                    self._set_state(SessionState.BACKING_OFF)
                log.info("mqtt_retry_scheduled", delay_s=round(delay, 3), refused=refused)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
        finally:
            self._connected_since = None
            self._set_state(SessionState.STOPPED)
            self._finished.set()
            log.info("mqtt_stopped", outbox_depth=self._outbox.depth)

    async def stop(self) -> None:
        """Flush what is queued (bounded), disconnect cleanly, and wait for ``run()`` to end."""
        self._stop_requested.set()
        self._wake.set()
        if self._run_task is None:
            self._set_state(SessionState.STOPPED)
            return
        if asyncio.current_task() is not self._run_task:
            await self._finished.wait()

    # --- one connection ---------------------------------------------------------------------

    def _set_state(self, state: SessionState) -> None:
        if state is not self._state:
            log.debug("mqtt_state", from_state=self._state.value, to_state=state.value)
            self._state = state

    def _client(self) -> aiomqtt.Client:
        v5 = self._settings.protocol == "5"
        return aiomqtt.Client(
            self._address.host,
            self._address.port,
            identifier=self._client_id,
            username=self._settings.username,
            password=read_password(self._settings, self._environ),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=self._will,
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=self._settings.keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
            tls_params=self._tls,
            max_inflight_messages=SEND_BATCH,
        )

    async def _attempt(self, backoff: Backoff) -> bool:
        """One connection from CONNECTING to its end; True when the broker refused it."""
        self._set_state(SessionState.CONNECTING)
        log.info("mqtt_connecting", url=self._address.url, protocol=self._settings.protocol)
        try:
            client = self._client()
            async with contextlib.AsyncExitStack() as stack:
                if not await self._enter(stack, client):
                    return False
                backoff.reset()
                await self._connected(client)
                self._live = client
                try:
                    await self._serve(client)
                finally:
                    self._live = None
        except MqttConnectError as exc:
            self._last_error = f"refused by broker: {exc}"
            self._set_state(SessionState.REFUSED)
            log.error("mqtt_refused", url=self._address.url, reason=str(exc))
            return True
        except (aiomqtt.MqttError, OSError, ValueError) as exc:
            self._last_error = describe_error(exc)
            was_connected = self._connected_since is not None
            log.warning(
                "mqtt_connection_lost" if was_connected else "mqtt_connect_failed",
                url=self._address.url,
                error=self._last_error,
            )
        finally:
            self._connected_since = None
        self._set_state(SessionState.DISCONNECTED)
        return False

    async def _enter(self, stack: contextlib.AsyncExitStack, client: aiomqtt.Client) -> bool:
        """Connect unless stop() comes first; False when it did."""
        connecting = asyncio.ensure_future(stack.enter_async_context(client))
        stopping = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if connecting.done():
            connecting.result()
            return True
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await connecting
        return False

    async def _connected(self, client: aiomqtt.Client) -> None:
        for topic_filter in self._subscriptions:
            codes = await client.subscribe(topic_filter, qos=COMMAND_QOS)
            for code in codes:
                if getattr(code, "is_failure", False):
                    log.error("mqtt_subscribe_refused", filter=topic_filter, reason=str(code))
        self._connections += 1
        self._connected_since = time.time()
        self._unsent_retained.update(self._retained)
        self._set_state(SessionState.CONNECTED)
        log.info(
            "mqtt_connected",
            url=self._address.url,
            reconnects=self._connections - 1,
            outbox_depth=self._outbox.depth,
        )
        if self._on_connect is not None:
            try:
                await self._on_connect()
            except Exception:
                log.exception("mqtt_on_connect_failed")

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Read and send until the connection breaks, or until stop() and the queue is empty."""
        reader = asyncio.ensure_future(self._read(client))
        sender = asyncio.ensure_future(self._send(client))
        stopping = asyncio.ensure_future(self._stop_requested.wait())
        tasks = {reader, sender, stopping}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if done == {stopping}:
                done, _ = await asyncio.wait(
                    {reader, sender},
                    timeout=self._flush_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    log.warning(
                        "mqtt_stop_flush_incomplete",
                        outbox_depth=self._outbox.depth,
                        retained_unsent=len(self._unsent_retained),
                    )
            for task in done - {stopping}:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload
            data = bytes(payload) if isinstance(payload, (bytes, bytearray)) else b""
            try:
                await self._on_message(topic, data)
            except Exception:
                log.exception("mqtt_message_handler_failed", topic=topic)

    async def _send(self, client: aiomqtt.Client) -> None:
        """The only writer: retained state first, then the outbox in order.

        Retained state changed while it was being sent is sent again before the next
        outbox batch, so a state published before a message (a deployment's ``failed``
        before the reply that says so) reaches the broker first.
        """
        while True:
            self._wake.clear()
            while self._unsent_retained:
                await self._send_retained(client)
            if await self._send_outbox_batch(client) or self._unsent_retained:
                continue
            if self._stop_requested.is_set():
                return
            await self._wake.wait()

    async def _send_retained(self, client: aiomqtt.Client) -> None:
        for topic in list(self._unsent_retained):
            payload, qos = self._retained[topic]
            self._unsent_retained.discard(topic)
            try:
                await client.publish(topic, payload, qos=qos, retain=True)
            except BaseException:
                self._unsent_retained.add(topic)
                raise

    async def _send_outbox_batch(self, client: aiomqtt.Client) -> bool:
        """Send the oldest batch; ack the acknowledged prefix. False when nothing was queued."""
        batch = self._outbox.peek_batch(SEND_BATCH)
        if not batch:
            return False
        results = await asyncio.gather(
            *(client.publish(item.topic, item.payload, qos=item.qos) for item in batch),
            return_exceptions=True,
        )
        acked: int | None = None
        failure: BaseException | None = None
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failure = result
                break
            acked = item.key
        if acked is not None:
            self._outbox.ack(acked)
            self._overflowing = self._overflowing and self._outbox.depth > 0
        if failure is not None:
            raise failure
        return True
