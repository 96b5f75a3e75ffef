"""MqttSession over TLS against a real mosquitto with a throwaway CA."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from agent.core.config import MqttSection
from agent.mqtt.session import MqttSession, SessionState
from tests.support.certificates import TlsFiles, make_certificates
from tests.support.mosquitto import Mosquitto, poll_async

TOPIC = "edge/cam-7/events"


async def ignore(topic: str, payload: bytes) -> None:
    del topic, payload


def session_for(url: str, **files: Path) -> MqttSession:
    settings = MqttSection(url=url, reconnect_min_s=0.05, reconnect_max_s=0.5, **files)
    return MqttSession(
        settings,
        client_id="cam-7",
        will=("edge/cam-7/status", b"lost"),
        subscriptions=[],
        on_message=ignore,
    )


async def publish_over(session: MqttSession, probe) -> None:
    task = asyncio.create_task(session.run())
    try:
        await session.publish(TOPIC, b"over tls")
        await probe.wait_for_async(lambda m: m.payload == b"over tls", what="the TLS message")
        assert session.state is SessionState.CONNECTED
    finally:
        await session.stop()
        await task


@pytest.fixture
def certificates(tmp_path: Path) -> TlsFiles:
    return make_certificates(tmp_path / "pki")


def test_session_connects_over_tls_verifying_the_broker(tmp_path: Path, certificates, mqtt_probe):
    broker = Mosquitto(tmp_path / "broker", tls=certificates)
    broker.start()
    probe = mqtt_probe(broker.port, [TOPIC])
    try:
        asyncio.run(publish_over(session_for(broker.tls_url, ca_file=certificates.ca), probe))
    finally:
        broker.kill()


def test_client_certificate_is_presented_when_the_broker_requires_one(
    tmp_path: Path, certificates, mqtt_probe
):
    broker = Mosquitto(tmp_path / "broker", tls=certificates, require_client_certificate=True)
    broker.start()
    probe = mqtt_probe(broker.port, [TOPIC])
    session = session_for(
        broker.tls_url,
        ca_file=certificates.ca,
        cert_file=certificates.client_cert,
        key_file=certificates.client_key,
    )
    try:
        asyncio.run(publish_over(session, probe))
    finally:
        broker.kill()


def test_a_broker_certificate_from_another_ca_is_not_trusted(tmp_path: Path, certificates):
    broker = Mosquitto(tmp_path / "broker", tls=certificates)
    broker.start()
    stranger = make_certificates(tmp_path / "other-pki")

    async def scenario() -> None:
        session = session_for(broker.tls_url, ca_file=stranger.ca)
        with structlog.testing.capture_logs() as events:
            task = asyncio.create_task(session.run())
            await poll_async(lambda: session.status().last_error is not None, what="a failure")
            await session.stop()
            await task
        assert "CERTIFICATE_VERIFY_FAILED" in (session.status().last_error or "")
        assert "mqtt_connected" not in [e["event"] for e in events]

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()
