"""EmbeddedBroker: the mosquitto child process behind ``[mqtt] url = "embedded"``."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agent.config import MqttSection
from agent.mqtt.broker import BrokerError, EmbeddedBroker
from agent.mqtt.session import MqttSession, SessionState
from tests.mosquitto import MOSQUITTO, poll_async


def test_embedded_broker_serves_a_session_and_stops(mqtt_probe):
    with EmbeddedBroker(MOSQUITTO) as broker:
        assert broker.url.startswith("mqtt://127.0.0.1:")
        assert broker.running
        log_path = broker.log_path
        probe = mqtt_probe(broker.port, ["edge/#"])
        commands: list[bytes] = []

        async def on_message(topic: str, payload: bytes) -> None:
            commands.append(payload)

        async def scenario() -> None:
            session = MqttSession(
                MqttSection(),
                url=broker.url,
                client_id="cam-7",
                will=("edge/cam-7/status", b"lost"),
                subscriptions=["edge/cam-7/cmd/+"],
                on_message=on_message,
            )
            task = asyncio.create_task(session.run())
            await poll_async(lambda: session.state is SessionState.CONNECTED, what="connection")
            await session.publish("edge/cam-7/events", b"hello")
            await probe.wait_for_async(lambda m: m.payload == b"hello", what="the event")
            probe.publish("edge/cam-7/cmd/ping", b'{"id":"1"}')
            await poll_async(lambda: commands == [b'{"id":"1"}'], what="the command")
            await session.stop()
            await task

        asyncio.run(scenario())
        assert log_path is not None and "mosquitto version" in log_path.read_text()
    assert not broker.running
    assert log_path is not None and not log_path.exists()
    broker.stop()


def test_a_missing_binary_is_named():
    broker = EmbeddedBroker(Path("/nonexistent/mosquitto"))
    with pytest.raises(BrokerError, match="/nonexistent/mosquitto not found"):
        broker.start()


def test_a_taken_port_fails_with_the_brokers_own_words():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = EmbeddedBroker(MOSQUITTO, port=port)
        with pytest.raises(BrokerError, match=f"(?s)port {port} exited: .*Address already in use"):
            broker.start()
    with pytest.raises(BrokerError, match="not started"):
        _ = broker.url


def test_starting_twice_is_an_error():
    with EmbeddedBroker(MOSQUITTO) as broker, pytest.raises(BrokerError, match="already started"):
        broker.start()
