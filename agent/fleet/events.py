"""``edge-agent fleet events``: the devices' events, live, as JSON lines.

Subscribes to ``<prefix>/+/status`` (retained: it gives each device's groups, so that
``--group`` can filter) and ``<prefix>/+/events``. Each event that parses as an
``EventPayload`` and passes the filters is written as one JSON object on one line: the
payload's fields (object, zone and line events carry an ``ObjectEventData`` in ``data``)
plus ``device``, the device id of the topic it came on. Pure but for the connection:
``EventStream.handle`` takes the broker's bytes and returns the lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
import structlog

from agent.fleet.consumer import fast_subscriber, run_until_first
from agent.fleet.control import ControlClient, ControlError
from agent.fleet.link import SUBSCRIBE_QOS
from agent.fleet.view import FleetView, split_topic
from agent.mqtt import Batch, MqttFastError
from agent.wire import EventPayload, check_segment

__all__ = ["EventFilter", "EventStream", "stream_events"]

log = structlog.get_logger(__name__)

EVENTS_QOS = 1
"""Events travel through the agent's outbox at QoS 1; reading them at 1 keeps the broker's guarantee."""


@dataclass(frozen=True)
class EventFilter:
    """Which events to print: every given criterion must hold (``None``/empty: any)."""

    device: str | None = None
    group: str | None = None
    kinds: frozenset[str] = frozenset()

    def keeps(self, device: str, groups: Iterable[str], kind: str) -> bool:
        if self.device is not None and device != self.device:
            return False
        if self.group is not None and self.group not in groups:
            return False
        return not self.kinds or kind in self.kinds

    def __post_init__(self) -> None:
        if self.device is not None:
            check_segment(self.device, "device id")


class EventStream:
    """Turns the broker's messages into the JSON lines of the events that pass ``selection``."""

    def __init__(self, prefix: str, selection: EventFilter) -> None:
        self.prefix = prefix
        self.selection = selection
        self.view = FleetView(prefix)
        self.rejected = 0

    def filters(self) -> list[tuple[str, int]]:
        device = self.selection.device or "+"
        return [(f"{self.prefix}/{device}/status", SUBSCRIBE_QOS), (f"{self.prefix}/{device}/events", EVENTS_QOS)]

    def handle(self, topic: str, data: bytes) -> bytes | None:
        """One message: the line to print, or None (status, filtered out, or not an event)."""
        where = split_topic(self.prefix, topic)
        if where is None or where[1] not in ("status", "events"):
            self.rejected += 1
            return None
        message = self.view.parse_at(where[0], where[1], data)
        if message is None:
            self.rejected += 1
            return None
        self.view.update(message)
        event = message.data
        if not isinstance(event, EventPayload):
            return None
        device = self.view.device(message.device_id)
        if not self.selection.keeps(message.device_id, device.groups, event.kind):
            return None
        return orjson.dumps({"device": message.device_id, **event.model_dump(mode="json")})


async def stream_events(control: ControlClient, selection: EventFilter, write: Callable[[bytes], None],
                        stop: asyncio.Event) -> None:
    """Print (``write``) every selected event until ``stop``; ControlError when the broker cannot be reached."""
    stream = EventStream(control.prefix, selection)

    def on_batch(batch: Batch) -> None:
        for topic, data in batch:
            line = stream.handle(topic, data)
            if line is not None:
                write(line)

    client = fast_subscriber(control, on_batch)
    try:
        await client.connect()
        await client.subscribe(stream.filters())
        log.info("events_subscribed", filters=[f for f, _ in stream.filters()])
        await run_until_first(client.run(), stop.wait())
    except MqttFastError as exc:
        raise ControlError(f"broker {control.address.url}: {exc}") from exc
    finally:
        client.close()
