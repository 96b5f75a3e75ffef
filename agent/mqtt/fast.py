"""A small MQTT 5 client that reads the wire in batches: the fleet consumer's, and the simulated devices'.

The consumer's bulk is QoS 1 PUBLISH packets of a few hundred bytes; through
aiomqtt each one costs a paho packet object, a callback, an asyncio queue put
and get and a coroutine step, which capped an instance well under 20k
messages/s. This client parses every PUBLISH in one read of the socket
(``asyncio.Protocol.data_received``) with a plain loop over the buffer, hands
the batch to one callback, and sends the PUBACKs of the batch in one write
after the callback returned (so a message is acknowledged once it was
handled). The socket is not read while a batch is handled: TCP flow control is
the back pressure.

What it speaks: CONNECT (MQTT 5, clean start, user name and password, a
Receive Maximum), SUBSCRIBE (any filter, ``$share/...`` included), PUBLISH at
QoS 0 and 1 both ways, PINGREQ on the keep-alive, DISCONNECT. No QoS 2 (the
consumer never subscribes at 2), no topic aliases (it announces none, so the
broker sends none), no reconnect (the consumer's caller restarts it, as with
aiomqtt). TLS through ``ssl.SSLContext``. Anything else the broker sends that
breaks those assumptions ends the connection with ``MqttFastError``.

``pack_publish`` is also the flood publisher's encoder in agent.dev.bench_fleet. agent.sim.fastsession
puts a reconnect loop around it for simulated devices (CONNECT then carries their will).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from typing import Any

from agent.mqtt.errors import MqttError

__all__ = ["Batch", "FastSubscriber", "MqttFastError", "Will", "pack_connect", "pack_publish", "tls_context", "varint"]

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
PROP_RECEIVE_MAXIMUM = 0x21
KEEPALIVE_S = 60
"""Seconds between keep-alive pings (as aiomqtt's default); the broker drops us after 1.5 of them."""
RECEIVE_MAXIMUM = 1000
"""QoS 1 messages the broker may have in flight to us (MQTT 5 Receive Maximum). mosquitto's own
default for its clients is 20: at 20k messages/s that leaves 1 ms per round trip, which a batch
of a few hundred messages handled between two reads never meets; 1000 covers a batch."""
CONNECT_TIMEOUT_S = 10.0
"""How long CONNACK and SUBACK may take."""
FAILURE = 0x80
"""Reason codes from here up are failures (MQTT 5, 2.4)."""

Will = tuple[str, bytes]
"""A last will: (topic, payload), sent at QoS 1 and retained."""
Batch = list[tuple[str, bytes]]
"""(topic, payload) of the PUBLISH packets of one read."""


class MqttFastError(MqttError, ConnectionError):
    """The connection failed, was refused, or the broker sent what this client does not speak."""


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def pack_connect(client_id: str, *, username: str | None = None, password: str | None = None,
                 keepalive_s: int = KEEPALIVE_S, receive_maximum: int | None = RECEIVE_MAXIMUM,
                 version: int = 5, will: Will | None = None) -> bytes:
    """CONNECT with a clean start; ``version`` 4 is MQTT 3.1.1 (no properties); ``will`` the last will
    (topic, payload, QoS 1, retained), which the broker publishes when the connection dies unannounced."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    if will is not None:
        flags |= 0x04 | 1 << 3 | 0x20  # will flag, will QoS 1, will retain
    body = _string("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive_s)
    if version == 5:
        props = struct.pack("!BH", PROP_RECEIVE_MAXIMUM, receive_maximum) if receive_maximum else b""
        body += varint(len(props)) + props
    body += _string(client_id)
    if will is not None:
        body += (b"\x00" if version == 5 else b"") + _string(will[0]) + _string(will[1])
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT, 0, body)


def pack_publish(topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 0, version: int = 5,
                 retain: bool = False) -> bytes:
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + (b"\x00" if version == 5 else b"")
    return _packet(PUBLISH, qos << 1 | int(retain), body + payload)


def _pack_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"\x00"
    for topic_filter, qos in filters:
        body += _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def _read_varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, offset after it), None when the buffer ends inside it; MqttFastError past 4 bytes."""
    value, shift = 0, 0
    for i in range(at, min(at + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(data) - at >= 4:
        raise MqttFastError("malformed remaining length")
    return None


class _Protocol(asyncio.Protocol):
    def __init__(self, client: FastSubscriber) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._transport = transport  # type: ignore[assignment]  # paho's socket choice, private

    def data_received(self, data: bytes) -> None:
        self.client._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class FastSubscriber:
    """One MQTT 5 connection; ``on_batch`` gets the PUBLISH packets of each read, in order."""

    def __init__(self, host: str, port: int, client_id: str, on_batch: Callable[[Batch], None], *,
                 username: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None, keepalive_s: int = KEEPALIVE_S,
                 receive_maximum: int = RECEIVE_MAXIMUM, will: Will | None = None) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.on_batch = on_batch
        self.username, self.password, self.tls = username, password, tls
        self.keepalive_s = keepalive_s
        self.receive_maximum = receive_maximum
        self.will = will
        self.received = 0
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._acks: dict[int, asyncio.Future[bytes]] = {}
        self._closed: asyncio.Future[None] | None = None
        self._next_id = 0

    # ----- lifecycle --------------------------------------------------------------------------
    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: _Protocol(self), self.host, self.port, ssl=self.tls,
                server_hostname=self.host if self.tls else None), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            raise MqttFastError(f"cannot connect: {exc or type(exc).__name__}") from exc
        connack = self._expect(CONNACK, 0)
        self._write(pack_connect(self.client_id, username=self.username, password=self.password,
                                 keepalive_s=self.keepalive_s, receive_maximum=self.receive_maximum,
                                 will=self.will))
        body = await self._wait(connack)
        if len(body) < 2 or body[1] >= FAILURE:
            self.close()
            raise MqttFastError(f"connection refused, reason code 0x{body[1] if len(body) > 1 else 0:02x}")

    async def subscribe(self, filters: list[tuple[str, int]]) -> None:
        """Subscribe to all ``(filter, qos)`` at once; MqttFastError when the broker refuses one."""
        packet_id = self._packet_id()
        suback = self._expect(SUBACK, packet_id)
        self._write(_pack_subscribe(packet_id, filters))
        body = await self._wait(suback)
        props = _read_varint(body, 2)
        codes = body[props[1] + props[0]:] if props else b""
        refused = [f for (f, _), code in zip(filters, codes, strict=False) if code >= FAILURE]
        if len(codes) != len(filters) or refused:
            raise MqttFastError(f"subscription refused: {refused or filters}")

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing() and self._closed is not None \
            and not self._closed.done()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Queue a PUBLISH on the socket (QoS 1: the broker's PUBACK is read and dropped)."""
        self._write(pack_publish(topic, payload, qos, self._packet_id() if qos else 0, retain=retain))

    async def run(self) -> None:
        """Ping on the keep-alive until the connection ends; raises MqttFastError when it ends badly."""
        assert self._closed is not None
        while not self._closed.done():
            done, _ = await asyncio.wait({self._closed}, timeout=self.keepalive_s / 2)
            if not done:
                self._write(_packet(PINGREQ, 0, b""))
        self._closed.result()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_packet(DISCONNECT, 0, b""))
            self._transport.close()

    # ----- internals --------------------------------------------------------------------------
    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise MqttFastError("not connected")
        self._transport.write(data)

    def _expect(self, kind: int, packet_id: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[kind << 16 | packet_id] = future
        return future

    async def _wait(self, future: asyncio.Future[bytes]) -> bytes:
        assert self._closed is not None
        waited: set[asyncio.Future[Any]] = {future, self._closed}
        done, _ = await asyncio.wait(waited, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return bytes(future.result())
        if self._closed.done():
            self._closed.result()
            raise MqttFastError("connection closed")
        raise MqttFastError(f"no answer within {CONNECT_TIMEOUT_S:.0f}s")

    def _fail(self, error: MqttFastError) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def _lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            if exc is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(MqttFastError(f"connection lost: {exc}"))

    def _received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            batch, acks, used = self._parse(buffer)
        except MqttFastError as exc:
            self._fail(exc)
            return
        del buffer[:used]
        if batch:
            self.received += len(batch)
            try:
                self.on_batch(batch)
            except Exception as exc:  # the consumer's own error: end the connection with it
                error = MqttFastError(f"message handler failed: {exc!r}")
                error.__cause__ = exc
                self._fail(error)
                return
        if acks and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(b"\x40\x02" + struct.pack("!H", i) for i in acks))

    def _parse(self, buffer: bytearray) -> tuple[Batch, list[int], int]:
        batch: Batch = []
        acks: list[int] = []
        at, end = 0, len(buffer)
        view = memoryview(buffer)
        try:
            while end - at >= 2:
                header = buffer[at]
                length = _read_varint(buffer, at + 1)
                if length is None:
                    break
                size, start = length
                stop = start + size
                if stop > end:
                    break
                kind = header >> 4
                if kind == PUBLISH:
                    qos = (header >> 1) & 0x03
                    topic_len = buffer[start] << 8 | buffer[start + 1]
                    cursor = start + 2 + topic_len
                    topic = str(view[start + 2:cursor], "utf-8")
                    if qos:
                        if qos == 2:
                            raise MqttFastError("QoS 2 PUBLISH (never subscribed at 2)")
                        acks.append(buffer[cursor] << 8 | buffer[cursor + 1])
                        cursor += 2
                    props = _read_varint(buffer, cursor)
                    if props is None:
                        raise MqttFastError("truncated PUBLISH properties")
                    batch.append((topic, bytes(view[props[1] + props[0]:stop])))
                else:
                    self._control(kind, bytes(view[start:stop]))
                at = stop
        except (UnicodeDecodeError, IndexError) as exc:
            raise MqttFastError(f"malformed packet: {exc}") from None
        finally:
            view.release()
        return batch, acks, at

    def _control(self, kind: int, body: bytes) -> None:
        if kind in (PUBACK, PINGRESP):
            return
        if kind == DISCONNECT:
            code = body[0] if body else 0
            raise MqttFastError(f"the broker disconnected us, reason code 0x{code:02x}")
        packet_id = 0 if kind == CONNACK else struct.unpack("!H", body[:2])[0]
        future = self._acks.pop(kind << 16 | packet_id, None)
        if future is None:
            raise MqttFastError(f"unexpected packet type {kind}")
        if not future.done():
            future.set_result(body)


def tls_context(enabled: bool) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` broker (system CAs, hostname checked), as aiomqtt's default."""
    return ssl.create_default_context() if enabled else None
