"""Where non-retained messages wait until the broker has acknowledged them.

The session writes every telemetry, event and reply message into an ``Outbox``
and a single sender drains it in order while connected. ``MemoryOutbox`` is
bounded and drops the oldest message when full, and forgets everything when the
process ends. ``SqliteOutbox`` (:mod:`agent.mqtt.sqlite_outbox`) keeps them on
disk across restarts, kills and power losses, with the per-topic sequence numbers
beside them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_OUTBOX_CAPACITY",
    "DEFAULT_OUTBOX_MAX_AGE_S",
    "MemoryOutbox",
    "Outbox",
    "OutboxItem",
]

DEFAULT_OUTBOX_CAPACITY = 10_000
"""Messages kept while the broker is away; at 1 message/s, close to three hours."""
DEFAULT_OUTBOX_MAX_AGE_S = 86_400.0
"""Messages older than this (a day) are dropped unsent: stale telemetry helps nobody."""


@dataclass(frozen=True)
class OutboxItem:
    key: int
    """Increases with every put; ``ack(key)`` removes this item and everything older."""
    topic: str
    payload: bytes
    qos: int


class Outbox(Protocol):
    def put(self, topic: str, payload: bytes, qos: int) -> None: ...

    def peek_batch(self, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` items, oldest first, without removing them."""
        ...

    def ack(self, key: int) -> None:
        """Remove every item whose key is <= ``key`` (already dropped ones are no matter)."""
        ...

    @property
    def depth(self) -> int: ...

    @property
    def dropped(self) -> int:
        """Messages discarded (oldest first) because the outbox was full."""
        ...


class MemoryOutbox:
    """A bounded FIFO in memory: lost when the process ends, oldest dropped when full."""

    def __init__(self, capacity: int = DEFAULT_OUTBOX_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[OutboxItem] = deque()
        self._next_key = 1
        self._dropped = 0

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self._dropped += 1
        self._items.append(OutboxItem(self._next_key, topic, payload, qos))
        self._next_key += 1

    def peek_batch(self, limit: int) -> list[OutboxItem]:
        return [self._items[i] for i in range(min(limit, len(self._items)))]

    def ack(self, key: int) -> None:
        while self._items and self._items[0].key <= key:
            self._items.popleft()

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def dropped(self) -> int:
        return self._dropped
