"""The results publisher on a real MQTT session, as the results tests run it (device ``dev1``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from agent.core.config import MqttSection
from agent.monitor.egress import EgressGuard
from agent.monitor.telemetry import Telemetry
from agent.mqtt.outbox import MemoryOutbox
from agent.mqtt.session import MqttSession, SessionState
from agent.results import HANDOFF_QUEUE, ResultsPublisher, ResultsSettings
from agent.wire import PAYLOADS
from agent.wire.topics import Topics
from tests.support.mosquitto import poll

TOPICS = Topics("edge", "dev1")
WAIT_S = 30.0
"""The longest a step of a scenario waits (a connection, a message)."""


async def _ignore(topic: str, payload: bytes) -> None:
    return None


def session(url: str, outbox: MemoryOutbox | None = None) -> MqttSession:
    """A session of ``dev1`` to ``url`` that reconnects within half a second and subscribes to nothing."""
    return MqttSession(MqttSection(url=url, reconnect_min_s=0.05, reconnect_max_s=0.5), client_id="dev1",
                       will=(TOPICS.status, b"lost"), subscriptions=[], on_message=_ignore, outbox=outbox)


def results_publisher(link: MqttSession, settings_of: Callable[[str], ResultsSettings | None], state_dir: Path,
              queue_size: int = HANDOFF_QUEUE) -> ResultsPublisher:
    """The results publisher on ``link``, through the real egress guard (``results.telemetry.egress``)."""
    telemetry = Telemetry(TOPICS, "dev1", "test")
    telemetry.attach(link)
    telemetry.egress = EgressGuard(PAYLOADS)
    return ResultsPublisher(telemetry, TOPICS, settings_of, state_dir, queue_size=queue_size)


@contextlib.asynccontextmanager
async def publishing(link: MqttSession, results: ResultsPublisher) -> AsyncIterator[None]:
    """The session and the publisher running, from the connection on; the publisher closed, then the session."""
    running = asyncio.create_task(link.run())
    task = asyncio.create_task(results.run())
    await asyncio.to_thread(poll, lambda: link.state is SessionState.CONNECTED, WAIT_S, "the connection")
    yield
    await results.close()
    await task
    await link.stop()
    await running
