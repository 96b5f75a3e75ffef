"""Nobody in who does not belong: the shipped mosquitto config (mutual TLS, per-device ACL) with
the real agent, clients without a valid certificate, a device reaching for another's topics,
and signed commands end to end."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.authority import sign_command
from tests.support.agentproc import REPO, AgentProcess, agent_config
from tests.support.certificates import Fleet, make_fleet
from tests.support.mosquitto import Mosquitto, MqttProbe, free_port, run_as_me, write_passwords

pytestmark = pytest.mark.slow

SHIPPED = REPO / "deploy" / "mosquitto"
WAIT_S = 90.0
CONTROL = ("control-plane", "control-secret")
CONNECT_WAIT_S = 10.0


def body(message: Any) -> dict[str, Any]:
    return json.loads(message.payload)


class FleetBroker(Mosquitto):
    """mosquitto running the shipped deploy/mosquitto/edge.conf and ACL files, with this test's
    certificates, ports and folders put in place of the installed paths; plus one plain
    loopback listener (the control ACL, a password) for the test's own observer."""

    def __init__(self, workdir: Path, fleet: Fleet) -> None:
        self.fleet = fleet
        self.device_port = free_port()
        self.control_port = free_port()
        super().__init__(workdir)

    @property
    def device_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.device_port}"

    def _write_config(self) -> None:
        passwd = write_passwords(self.workdir / "passwd", dict([CONTROL, ("telemetry", "telemetry-secret")]))
        installed = {
            "/etc/mosquitto/certs/fleet-ca.pem": self.fleet.ca,
            "/etc/mosquitto/certs/broker.pem": self.fleet.server_cert,
            "/etc/mosquitto/certs/broker.key": self.fleet.server_key,
            "/etc/mosquitto/edge/devices.acl": SHIPPED / "devices.acl",
            "/etc/mosquitto/edge/control.acl": SHIPPED / "control.acl",
            "/etc/mosquitto/edge/passwd": passwd,
            "/var/lib/mosquitto/": f"{self.workdir}/",
            "listener 8883": f"listener {self.device_port} 127.0.0.1",
            "listener 8884": f"listener {self.control_port} 127.0.0.1",
        }
        text = (SHIPPED / "edge.conf").read_text()
        for path, here in installed.items():
            assert path in text, f"the shipped edge.conf no longer mentions {path}"
            text = text.replace(path, str(here))
        lines = [text, "log_dest stderr", "log_type all",
                 f"listener {self.port} 127.0.0.1", "allow_anonymous false",
                 f"password_file {passwd}", f"acl_file {SHIPPED / 'control.acl'}"]
        lines[:0] = run_as_me()
        self.config_path.write_text("\n".join(lines) + "\n")


def try_connect(port: int, ca: Path, cert: Path | None, key: Path | None) -> str:
    """Connect over TLS and say how it went: ``connected`` or why not."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"try-{time.monotonic_ns()}")
    client.tls_set(ca_certs=str(ca), certfile=str(cert) if cert else None,
                   keyfile=str(key) if key else None)
    done = threading.Event()
    outcome: list[str] = []

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        outcome.append("refused: " + str(reason_code) if reason_code.is_failure else "connected")
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        outcome.append(f"disconnected: {reason_code}")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return f"tls refused: {exc}"
    client.loop_start()
    try:
        done.wait(CONNECT_WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] if outcome else "no answer"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path / "pki", ["dev1", "dev2"])


@pytest.fixture
def fleet_broker(tmp_path: Path, fleet: Fleet):
    broker = FleetBroker(tmp_path / "broker", fleet)
    broker.start()
    yield broker
    broker.kill()


def test_only_clients_with_a_certificate_from_the_fleet_ca_get_in(fleet, fleet_broker):
    device = fleet.clients["dev2"]
    assert try_connect(fleet_broker.device_port, fleet.ca, *device) == "connected"
    assert try_connect(fleet_broker.device_port, fleet.ca, None, None) != "connected"
    assert try_connect(fleet_broker.device_port, fleet.ca, *fleet.clients["rogue"]) != "connected"
    # The control listener wants a password; a device certificate alone does not open it.
    assert try_connect(fleet_broker.control_port, fleet.ca, *device) != "connected"


def test_the_agent_comes_online_over_mutual_tls_and_no_device_reaches_another(
    tmp_path, demo_dir, fleet, fleet_broker
):
    cert, key = fleet.clients["dev1"]
    config = agent_config(tmp_path, demo_dir, fleet_broker.device_url,
                          mqtt={"ca_file": str(fleet.ca), "cert_file": str(cert), "key_file": str(key)})
    control = MqttProbe(fleet_broker.port, ["edge/dev1/#", "edge/dev2/#"], username=CONTROL[0],
                        password=CONTROL[1])
    agent = AgentProcess(config)
    other = None
    try:
        control.wait_for(lambda m: m.topic == "edge/dev1/status" and body(m)["state"] == "online",
                         timeout=WAIT_S, what="dev1 online over mutual TLS")
        control.publish("edge/dev1/cmd/ping", b'{"id": "from-control"}')
        control.wait_for(lambda m: m.topic == "edge/dev1/reply" and body(m)["id"] == "from-control",
                         timeout=WAIT_S, what="the agent answering the control plane")

        other = MqttProbe(fleet_broker.device_port, ["edge/dev1/#", "edge/dev2/cmd/#"],
                          tls=(fleet.ca, *fleet.clients["dev2"]))
        other.publish("edge/dev1/cmd/ping", b'{"id": "from-dev2"}')
        other.publish("edge/dev1/telemetry/health", b'{"spoofed": true}')
        other.publish("edge/group/lab/cmd/ping", b'{"id": "group-from-dev2"}')
        other.publish("edge/dev2/events", b'{"own": true}')
        control.wait_for(lambda m: m.topic == "edge/dev2/events", timeout=WAIT_S,
                         what="dev2's publish to its own topic (so dev2 is really connected)")
        control.publish("edge/dev1/cmd/ping", b'{"id": "marker"}')
        control.wait_for(lambda m: m.topic == "edge/dev1/reply" and body(m)["id"] == "marker",
                         timeout=WAIT_S, what="the reply to a command sent after dev2's")
        replies = [body(m)["id"] for m in control.snapshot("edge/dev1/reply")]
        assert "from-dev2" not in replies and "group-from-dev2" not in replies
        assert all(b"spoofed" not in m.payload for m in control.snapshot())

        seen = len(control.snapshot("edge/dev1/telemetry/latency"))
        control.wait_for(lambda m: m.topic == "edge/dev1/telemetry/latency"
                         and len(control.snapshot("edge/dev1/telemetry/latency")) >= seen + 3,
                         timeout=WAIT_S, what="dev1 publishing while dev2 listens")
        assert [m.topic for m in other.snapshot() if m.topic.startswith("edge/dev1/")] == []
    finally:
        if other is not None:
            other.close()
        code = agent.terminate()
        control.close()
    assert code == 0, agent.log()[-3000:]


def test_signed_commands_are_done_and_every_other_is_refused_with_its_code(
    tmp_path, demo_dir, mosquitto, mqtt_probe
):
    key = Ed25519PrivateKey.generate()
    public = tmp_path / "control.pub.pem"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    config = agent_config(tmp_path, demo_dir, mosquitto.url,
                          commands={"public_key_file": str(public), "max_clock_skew_s": 60.0})
    probe = mqtt_probe(mosquitto.port, ["edge/dev1/reply", "edge/dev1/events", "edge/dev1/status"])
    topic = "edge/dev1/cmd/ping"
    agent = AgentProcess(config)

    def answer(command_id: str | None, sent: bytes) -> dict[str, Any]:
        before = len(probe.snapshot("edge/dev1/reply"))
        probe.publish(topic, sent)
        probe.wait_for(lambda m: m.topic == "edge/dev1/reply"
                       and len(probe.snapshot("edge/dev1/reply")) > before,
                       timeout=WAIT_S, what=f"the reply to {command_id}")
        reply = body(probe.snapshot("edge/dev1/reply")[before])
        assert reply["id"] == command_id
        return reply

    try:
        # The agent subscribes before it publishes online: from then on it hears commands.
        probe.wait_for(lambda m: m.topic == "edge/dev1/status" and body(m)["state"] == "online",
                       timeout=WAIT_S, what="the agent online")
        signed = sign_command({"id": "signed-1"}, key, topic=topic)
        assert answer("signed-1", json.dumps(signed).encode())["ok"]
        codes = {
            "unsigned": answer("plain", b'{"id": "plain"}')["error"]["code"],
            "replayed": answer("signed-1", json.dumps(signed).encode())["error"]["code"],
            "stale": answer("old", json.dumps(sign_command(
                {"id": "old"}, key, topic=topic, now=time.time() - 3600)).encode())["error"]["code"],
            "bad_signature": answer("forged", json.dumps({**sign_command(
                {"id": "x"}, key, topic=topic), "id": "forged"}).encode())["error"]["code"],
        }
        assert codes == {code: code for code in codes}
        # The control-plane CLI signs with its key file.
        key_file = tmp_path / "control.key"
        key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        cli = subprocess.run([sys.executable, "-m", "agent", "ping", "--broker", mosquitto.url, "--device", "dev1",
                              "--sign-commands", str(key_file), "--timeout", "60"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["ok"] is True
        probe.wait_for(lambda m: m.topic == "edge/dev1/events"
                       and body(m)["kind"] == "command_rejected"
                       and body(m)["data"]["code"] == "bad_signature",
                       timeout=WAIT_S, what="a command_rejected event")
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
