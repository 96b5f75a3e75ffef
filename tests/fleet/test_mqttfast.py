"""The consumer's batching MQTT 5 client on a real mosquitto, and the one-walk summary of signal telemetry."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import pytest

from agent.fleet.view import largest, summarise, worst_state
from agent.mqtt import Batch, FastSubscriber, MqttFastError
from tests.support.mosquitto import WAIT_S, Mosquitto, poll_async

SIZES = (0, 1, 127, 128, 16383, 16384, 300_000)
"""Payload sizes around the one-, two- and three-byte remaining lengths, and one over a socket read."""
ROUNDS = 40


def test_every_publish_arrives_whole_and_in_order_across_reads_and_is_acknowledged(mosquitto: Mosquitto) -> None:
    sent = [(f"edge/dev-{n % 3}/telemetry/latency", bytes([n % 251]) * SIZES[n % len(SIZES)])
            for n in range(ROUNDS * len(SIZES))]
    received: Batch = []
    batches: list[int] = []

    def on_batch(batch: Batch) -> None:
        batches.append(len(batch))
        received.extend(batch)

    async def scenario() -> None:
        client = FastSubscriber("127.0.0.1", mosquitto.port, "fast-test", on_batch, receive_maximum=10)
        await client.connect()
        await client.subscribe([("$share/g/edge/+/telemetry/#", 1), ("edge/+/status", 0)])
        runner = asyncio.create_task(client.run())
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as publisher:
            for topic, payload in sent:
                await publisher.publish(topic, payload, qos=1)
        await poll_async(lambda: len(received) >= len(sent), timeout=WAIT_S, what="every message")
        client.close()
        await runner

    asyncio.run(scenario())
    assert received == sent
    assert max(batches) > 1


def test_an_unreachable_broker_is_an_error_that_names_it() -> None:
    async def scenario() -> None:
        client = FastSubscriber("127.0.0.1", 1, "fast-test", lambda batch: None)
        await client.connect()

    with pytest.raises(MqttFastError, match="cannot connect"):
        asyncio.run(scenario())


DOCUMENTS: list[dict[str, Any]] = [
    {"metrics": {"a": {"state": "ok", "psi": 0.1}, "b": {"state": "alarm", "psi": 0.4}}},
    {"slicings": {"s": {"state": "warn", "selection_rate": {"max_difference": 0.2}}}, "max_difference": 1},
    {"state": "unknown", "list": [{"state": "warn"}, [{"psi": 3}, {"psi": True}]], "psi": "high"},
    {"resources": {"rss": {"state": "ok", "value": 180.0}}},
    {},
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_one_walk_summary_reads_what_the_recursive_readers_read(document: dict[str, Any]) -> None:
    document = json.loads(json.dumps(document))
    summary = summarise(document)
    assert summary.state == worst_state(document)
    assert summary.psi == largest(document, "psi")
    assert summary.max_difference == largest(document, "max_difference")
