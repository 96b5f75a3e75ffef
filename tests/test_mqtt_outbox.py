"""MemoryOutbox: bounded FIFO, acknowledged prefix removal, oldest dropped when full."""

from __future__ import annotations

import pytest

from agent.mqtt.outbox import MemoryOutbox


def filled(capacity: int, count: int) -> MemoryOutbox:
    outbox = MemoryOutbox(capacity)
    for n in range(1, count + 1):
        outbox.put("t", str(n).encode(), 1)
    return outbox


def test_peek_returns_the_oldest_in_order_without_removing():
    outbox = filled(10, 4)
    batch = outbox.peek_batch(3)
    assert [item.payload for item in batch] == [b"1", b"2", b"3"]
    assert outbox.depth == 4


def test_ack_removes_everything_up_to_the_key():
    outbox = filled(10, 4)
    outbox.ack(outbox.peek_batch(2)[-1].key)
    assert [item.payload for item in outbox.peek_batch(10)] == [b"3", b"4"]


def test_overflow_drops_the_oldest_and_counts_them():
    outbox = filled(3, 5)
    assert outbox.dropped == 2
    assert [item.payload for item in outbox.peek_batch(10)] == [b"3", b"4", b"5"]


def test_ack_of_a_batch_partly_dropped_meanwhile_removes_only_what_was_sent():
    outbox = filled(3, 3)
    batch = outbox.peek_batch(3)
    outbox.put("t", b"4", 1)
    outbox.put("t", b"5", 1)
    outbox.ack(batch[-1].key)
    assert [item.payload for item in outbox.peek_batch(10)] == [b"4", b"5"]


def test_zero_capacity_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        MemoryOutbox(0)
