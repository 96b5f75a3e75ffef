"""EmbeddedBroker: the mosquitto child process behind ``[mqtt] url = "embedded"``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.core.config import MqttSection
from agent.mqtt.broker import (
    CONNECTION_FILE,
    EMBEDDED_USERNAME,
    PASSWORD_FILE,
    BrokerError,
    EmbeddedBroker,
    password_line,
)
from agent.mqtt.session import MqttSession, SessionState
from tests.support.agentproc import REPO, AgentProcess, agent_config
from tests.support.mosquitto import MOSQUITTO, WAIT_S, poll, poll_async


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


# --- the agent's broker: a password per start ----------------------------------------------


def connect_as(port: int, username: str | None = None, password: str | None = None) -> str:
    """``connected``, or the broker's reason for refusing (paho, MQTT 5)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        outcome.append(str(reason_code) if reason_code.is_failure else "connected")
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        done.wait(WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] if outcome else "no answer"


def test_the_agents_broker_takes_only_this_starts_password_written_for_its_user_only(tmp_path: Path):
    state = tmp_path / "state"
    broker = EmbeddedBroker(MOSQUITTO, credentials_dir=state)
    with broker:
        connection = json.loads((state / CONNECTION_FILE).read_text())
        password = Path(connection["password_file"]).read_text().strip()
        assert connection == {"url": broker.url, "username": EMBEDDED_USERNAME,
                              "password_file": str(state / PASSWORD_FILE)}
        assert {stat.S_IMODE((state / name).stat().st_mode) for name in (CONNECTION_FILE, PASSWORD_FILE)} == {0o600}
        assert connect_as(broker.port) == "Not authorized"
        assert connect_as(broker.port, EMBEDDED_USERNAME, "guess") in ("Not authorized", "Bad user name or password")
        assert connect_as(broker.port, EMBEDDED_USERNAME, password) == "connected"
        first = password
    assert not (state / CONNECTION_FILE).exists() and not (state / PASSWORD_FILE).exists()
    with EmbeddedBroker(MOSQUITTO, credentials_dir=state) as again:
        password = (state / PASSWORD_FILE).read_text().strip()
        assert password != first
        assert connect_as(again.port, EMBEDDED_USERNAME, first) != "connected"
        assert connect_as(again.port, EMBEDDED_USERNAME, password) == "connected"


def test_the_agents_own_session_connects_with_the_settings_the_broker_gives(tmp_path: Path):
    with EmbeddedBroker(MOSQUITTO, credentials_dir=tmp_path / "state") as broker:
        settings = broker.session_settings(MqttSection())
        assert settings.username == EMBEDDED_USERNAME and settings.password_file is not None

        async def scenario() -> None:
            session = MqttSession(settings, url=broker.url, client_id="cam-7",
                                  will=("edge/cam-7/status", b"lost"), subscriptions=[],
                                  on_message=lambda topic, payload: asyncio.sleep(0))
            task = asyncio.create_task(session.run())
            await poll_async(lambda: session.state is SessionState.CONNECTED, what="connection")
            await session.stop()
            await task

        asyncio.run(scenario())


def test_a_password_line_is_mosquittos_pbkdf2_sha512_format():
    line = password_line("edge-agent", "secret", salt=b"\0" * 12)
    found = re.fullmatch(r"edge-agent:\$7\$101\$AAAAAAAAAAAAAAAA\$([A-Za-z0-9+/=]+)\n", line)
    assert found is not None
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", b"\0" * 12, 101)
    assert base64.b64decode(found.group(1)) == expected


@pytest.mark.slow
def test_a_local_cli_talks_to_the_agents_embedded_broker_with_the_files_in_the_state_folder(
    tmp_path: Path, demo_dir: Path
):
    config = agent_config(tmp_path, demo_dir, "embedded")
    agent = AgentProcess(config)
    state = tmp_path / "state"
    try:
        poll(lambda: (state / CONNECTION_FILE).exists() or agent.proc.poll() is not None, 90,
             "the embedded broker's connection file")
        connection = json.loads((state / CONNECTION_FILE).read_text())
        assert connect_as(int(connection["url"].rsplit(":", 1)[1])) == "Not authorized"
        ping = subprocess.run(
            [sys.executable, "-m", "agent", "ping", "--broker", connection["url"], "--device", "dev1",
             "--username", connection["username"], "--password-file", connection["password_file"],
             "--timeout", "60"], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert ping.returncode == 0, ping.stderr
        assert json.loads(ping.stdout)["ok"] is True
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    assert not (state / CONNECTION_FILE).exists()
