"""MqttSession against a real mosquitto: will, reconnect, resubscribe, retained state, outbox."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import structlog

from agent.core.config import MqttSection
from agent.mqtt.outbox import MemoryOutbox
from agent.mqtt.session import MqttSession, SessionError, SessionState, SessionStoppedError
from agent.mqtt.settings import SessionConfigError
from agent.wire import StatusPayload, decode_payload, encode_payload
from agent.wire.topics import Topics
from tests.support.mosquitto import WAIT_S, Mosquitto, MqttProbe, poll_async

PROTOCOLS = ["3.1.1", "5"]
REPO = Path(__file__).resolve().parents[2]
TOPICS = Topics("edge", "dev1")
GROUP = "line-1"


def status_payload(state: str) -> bytes:
    payload = StatusPayload(
        device_id="dev1",
        ts=1.0,
        seq=1,
        state=state,
        agent_version="test",
        started_at=1.0,
        groups=(GROUP,),
    )
    return encode_payload(payload)


def state_of(payload: bytes) -> str:
    return decode_payload(StatusPayload, payload).state


class Inbox:
    """The session's on_message: records (topic, payload)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def has(self, payload: bytes) -> bool:
        return any(p == payload for _, p in self.messages)


def make_session(
    url: str,
    protocol: str,
    inbox: Callable[[str, bytes], Awaitable[None]] | None = None,
    *,
    settings: dict[str, object] | None = None,
    **options: object,
) -> MqttSession:
    """A session of device dev1 (group line-1) that retries quickly."""
    section = MqttSection(
        url=url, protocol=protocol, reconnect_min_s=0.05, reconnect_max_s=0.5, **(settings or {})
    )  # type: ignore[arg-type]
    return MqttSession(
        section,
        client_id="dev1",
        will=(TOPICS.status, status_payload("lost")),
        subscriptions=TOPICS.command_filters([GROUP]),
        on_message=inbox or Inbox(),
        **options,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(session: MqttSession) -> AsyncIterator[MqttSession]:
    task = asyncio.create_task(session.run())
    try:
        yield session
    finally:
        await asyncio.wait_for(session.stop(), WAIT_S)
        await task


def connected(session: MqttSession, reconnects: int = 0) -> Callable[[], bool]:
    def check() -> bool:
        status = session.status()
        return status.state is SessionState.CONNECTED and status.reconnects >= reconnects

    return check


def telemetry(probe: MqttProbe) -> list[int]:
    """Sequence numbers received on telemetry/health, duplicates (QoS 1 redelivery) removed."""
    seen: list[int] = []
    for message in probe.snapshot(TOPICS.telemetry("health")):
        value = int(message.payload)
        if value not in seen:
            seen.append(value)
    return seen


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_commands_arrive_and_telemetry_leaves_in_order(mosquitto: Mosquitto, mqtt_probe, protocol):
    probe = mqtt_probe(mosquitto.port, ["edge/dev1/#"])
    inbox = Inbox()

    async def scenario() -> None:
        async with running(make_session(mosquitto.url, protocol, inbox)) as session:
            await poll_async(connected(session), what="the session to connect")
            for seq in range(1, 21):
                await session.publish(TOPICS.telemetry("health"), str(seq).encode())
            probe.publish(TOPICS.command("ping"), b'{"id":"own"}')
            probe.publish(TOPICS.group_command(GROUP, "ping"), b'{"id":"group"}')
            await poll_async(lambda: len(inbox.messages) == 2, what="both commands")
            await probe.wait_for_async(lambda m: m.payload == b"20", what="the last telemetry")
        assert [TOPICS.command_name(t) for t, _ in inbox.messages] == ["ping", "ping"]
        assert telemetry(probe) == list(range(1, 21))

    asyncio.run(scenario())


def test_session_killed_abruptly_leaves_the_retained_lost_will(mosquitto: Mosquitto, mqtt_probe):
    probe = mqtt_probe(mosquitto.port, [TOPICS.status])
    child_code = (
        "import asyncio, sys\n"
        "from tests.mqtt.test_session import make_session, status_payload, TOPICS\n"
        "from agent.mqtt.session import SessionState\n"
        "async def main():\n"
        "    session = make_session(sys.argv[1], sys.argv[2])\n"
        "    task = asyncio.create_task(session.run())\n"
        "    await session.publish(TOPICS.status, status_payload('online'), retain=True)\n"
        "    while session.state is not SessionState.CONNECTED:\n"
        "        await asyncio.sleep(0.01)\n"
        "    await task\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", child_code, mosquitto.url, "5"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe.wait_for(lambda m: state_of(m.payload) == "online", what="status online")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT_S)
    probe.wait_for(lambda m: state_of(m.payload) == "lost", what="the will")
    late = mqtt_probe(mosquitto.port, [TOPICS.status])
    stored = late.wait_for(lambda m: m.retain, what="the retained status")
    assert state_of(stored.payload) == "lost"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clean_stop_flushes_and_leaves_offline_not_lost(mosquitto: Mosquitto, mqtt_probe, protocol):
    probe = mqtt_probe(mosquitto.port, ["edge/dev1/#"])

    async def scenario() -> None:
        session = make_session(mosquitto.url, protocol)
        async with running(session):
            await session.publish(TOPICS.status, status_payload("online"), retain=True)
            await poll_async(connected(session), what="the session to connect")
            for seq in range(1, 31):
                await session.publish(TOPICS.telemetry("health"), str(seq).encode())
            await session.publish(TOPICS.status, status_payload("offline"), retain=True)
        assert session.state is SessionState.STOPPED
        assert session.status().outbox_depth == 0

    asyncio.run(scenario())
    # The broker acknowledged all 30 before the stop returned; its copy to the probe may still be in flight.
    probe.wait_for(lambda m: m.topic == TOPICS.telemetry("health") and m.payload == b"30", what="seq 30")
    assert telemetry(probe) == list(range(1, 31))
    late = mqtt_probe(mosquitto.port, [TOPICS.status])
    stored = late.wait_for(lambda m: m.retain, what="the retained status")
    assert state_of(stored.payload) == "offline"
    assert all(state_of(m.payload) != "lost" for m in probe.snapshot(TOPICS.status))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_after_broker_restart_the_session_resubscribes_and_restores_retained_state(
    mosquitto: Mosquitto, mqtt_probe, protocol
):
    inbox = Inbox()
    connects: list[int] = []
    probe = mqtt_probe(mosquitto.port, [])

    async def on_connect() -> None:
        connects.append(len(connects) + 1)

    async def scenario() -> None:
        session = make_session(mosquitto.url, protocol, inbox, on_connect=on_connect)
        async with running(session):
            await session.publish(TOPICS.model, b'{"model":"v1"}', retain=True)
            await poll_async(connected(session), what="the first connection")
            mosquitto.kill()
            await poll_async(
                lambda: session.state is not SessionState.CONNECTED,
                what="the session to notice the broker is gone",
            )
            mosquitto.restart()
            await poll_async(connected(session, reconnects=1), what="the reconnection")
            await session.publish(TOPICS.events, b"marker")
            await poll_async(lambda: session.status().outbox_depth == 0, what="the marker sent")
            fresh = MqttProbe(mosquitto.port, [TOPICS.model])
            try:
                stored = await fresh.wait_for_async(lambda m: m.retain, what="the retained model")
            finally:
                fresh.close()
            assert stored.payload == b'{"model":"v1"}'
            probe.publish(TOPICS.command("status"), b'{"id":"after-restart"}')
            await poll_async(lambda: inbox.has(b'{"id":"after-restart"}'), what="the command")
            assert session.status().reconnects == 1
        assert connects == [1, 2]

    asyncio.run(scenario())


def broker_with_waiting_probe(tmp_path: Path, mqtt_probe) -> tuple[Mosquitto, MqttProbe]:
    """A persistent broker, stopped, that keeps a persistent probe's QoS 1 messages for it."""
    broker = Mosquitto(tmp_path / "persistent", persistence=True)
    broker.start()
    probe = mqtt_probe(broker.port, [TOPICS.telemetry("health")], persistent=True)
    broker.stop()
    return broker, probe


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_telemetry_published_while_broker_is_down_arrives_in_order_after(
    tmp_path: Path, mqtt_probe, protocol
):
    broker, probe = broker_with_waiting_probe(tmp_path, mqtt_probe)

    async def scenario() -> None:
        session = make_session(broker.url, protocol)
        async with running(session):
            for seq in range(1, 26):
                await session.publish(TOPICS.telemetry("health"), str(seq).encode())
            assert session.status().outbox_depth == 25
            assert session.state is not SessionState.CONNECTED
            broker.start()
            await probe.wait_for_async(lambda m: m.payload == b"25", what="the last message")
            await poll_async(lambda: session.status().outbox_depth == 0, what="an empty outbox")

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()
    assert telemetry(probe) == list(range(1, 26))


def test_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path, mqtt_probe):
    broker, probe = broker_with_waiting_probe(tmp_path, mqtt_probe)

    async def scenario() -> None:
        session = make_session(broker.url, "5", outbox=MemoryOutbox(capacity=5))
        async with running(session):
            for seq in range(1, 9):
                await session.publish(TOPICS.telemetry("health"), str(seq).encode())
            status = session.status()
            assert (status.outbox_depth, status.dropped) == (5, 3)
            broker.start()
            await probe.wait_for_async(lambda m: m.payload == b"8", what="the last message")

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()
    assert telemetry(probe) == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_refusing_the_credentials_is_refused_never_connected(tmp_path: Path, protocol):
    broker = Mosquitto(tmp_path / "auth", users={"device": "right-password"})
    broker.start()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")

    async def scenario() -> None:
        settings = {"username": "device", "password_file": wrong}
        session = make_session(broker.url, protocol, settings=settings)
        with structlog.testing.capture_logs() as events:
            async with running(session):
                await poll_async(
                    lambda: sum(e["event"] == "mqtt_refused" for e in events) >= 2,
                    what="two refused attempts",
                )
                status = session.status()
        assert status.state is SessionState.REFUSED
        assert status.connected_since is None
        assert "refused by broker" in (status.last_error or "")
        assert "mqtt_connected" not in [e["event"] for e in events]

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_password_from_the_credentials_directory_is_accepted(tmp_path: Path, mqtt_probe, protocol):
    broker = Mosquitto(tmp_path / "auth", users={"device": "right-password"})
    broker.start()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("right-password\n")
    probe = mqtt_probe(broker.port, [TOPICS.events], username="device", password="right-password")

    async def scenario() -> None:
        session = make_session(
            broker.url,
            protocol,
            settings={"username": "device"},
            environ={"CREDENTIALS_DIRECTORY": str(credentials)},
        )
        async with running(session):
            await session.publish(TOPICS.events, b"hello")
            await probe.wait_for_async(lambda m: m.payload == b"hello", what="the event")
            assert session.status().state is SessionState.CONNECTED

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()


def test_a_failing_message_handler_does_not_break_the_connection(mosquitto: Mosquitto, mqtt_probe):
    probe = mqtt_probe(mosquitto.port, [])
    handled: list[bytes] = []

    async def handler(topic: str, payload: bytes) -> None:
        handled.append(payload)
        if payload == b'{"id":"1"}':
            raise RuntimeError("handler bug")

    async def scenario() -> None:
        async with running(make_session(mosquitto.url, "5", handler)) as session:
            await poll_async(connected(session), what="the session to connect")
            probe.publish(TOPICS.command("ping"), b'{"id":"1"}')
            probe.publish(TOPICS.command("ping"), b'{"id":"2"}')
            await poll_async(lambda: len(handled) == 2, what="both commands")
            assert session.status().reconnects == 0

    asyncio.run(scenario())


def test_stop_while_the_broker_is_unreachable_ends_the_session(tmp_path: Path):
    broker = Mosquitto(tmp_path / "never-started")

    async def scenario() -> None:
        session = make_session(broker.url, "5")
        async with running(session):
            await poll_async(lambda: session.status().last_error is not None, what="a failure")
            assert session.status().connected_since is None
        assert session.state is SessionState.STOPPED
        with pytest.raises(SessionStoppedError, match="stopped"):
            await session.publish(TOPICS.events, b"late")
        with pytest.raises(SessionError, match="already called"):
            await session.run()

    asyncio.run(scenario())


def test_bad_publishes_and_settings_are_errors_naming_the_problem():
    async def scenario() -> None:
        session = make_session("mqtt://127.0.0.1:1", "5")
        with pytest.raises(SessionError, match="wildcard"):
            await session.publish("edge/+/x", b"")
        with pytest.raises(SessionError, match="qos"):
            await session.publish(TOPICS.events, b"", qos=3)
        with pytest.raises(SessionConfigError, match="embedded"):
            make_session("embedded", "5")

    asyncio.run(scenario())
