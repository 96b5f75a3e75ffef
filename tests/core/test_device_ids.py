"""Device ids are one topic level and never a reserved word: refused in the topic tree, in the
config and in the client certificate's CN, and the shipped device ACL gives a certificate with
such a CN nothing of another device's, the groups' or the consumers' topics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.core.config import ConfigError, MqttSection, parse_config
from agent.mqtt.settings import SessionConfigError, check_certificate_identity
from agent.wire.topics import CONSUMERS_SEGMENT, GROUP_SEGMENT, RESERVED_SEGMENTS, TopicError, Topics
from tests.e2e.test_security import CONTROL, FleetBroker
from tests.support.agentproc import REPO, agent_config
from tests.support.certificates import make_fleet
from tests.support.mosquitto import MqttProbe

TELEMETRY = ("telemetry", "telemetry-secret")
BAD_IDS = ["group", "_consumers", "dev1/cmd", "dev1/+", "#", "a\0b", "cam\n", "tab\there",
           "\x1b[31mred", "\ud800", " "]
TOML_IDS = [i for i in BAD_IDS if i != "\ud800"]
"""TOML itself refuses a lone surrogate."""
SETTLE_S = 0.5
"""After the last publish of a probe: time for a broker on loopback to deliver what it allowed."""


def test_the_levels_of_group_commands_and_consumer_digests_are_reserved():
    from agent.fleet.consumer import CONSUMERS_SEGMENT as DIGESTS

    assert {GROUP_SEGMENT, DIGESTS} <= RESERVED_SEGMENTS


@pytest.mark.parametrize("device_id", BAD_IDS)
def test_a_reserved_or_multi_level_device_id_has_no_topics(device_id: str):
    with pytest.raises(TopicError):
        Topics("edge", device_id)
    with pytest.raises(TopicError):
        Topics("edge", "dev1").command_filters([device_id])


@pytest.mark.parametrize("device_id", TOML_IDS)
def test_the_config_refuses_a_reserved_or_multi_level_device_id_or_group(device_id: str):
    quoted = json.dumps(device_id)
    with pytest.raises(ConfigError, match=r"agent\.device_id"):
        parse_config(f"[agent]\ndevice_id = {quoted}\n", environ={})
    with pytest.raises(ConfigError, match=r"agent\.groups"):
        parse_config(f'[agent]\ndevice_id = "dev1"\ngroups = ["lab", {quoted}]\n', environ={})


def test_ordinary_ids_pass(tmp_path: Path):
    config = parse_config('[agent]\ndevice_id = "cam-7.hall_2"\ngroups = ["lab", "café"]\n', environ={})
    assert Topics("edge", config.agent.device_id).command_filters(config.agent.groups)[2] == \
        "edge/group/café/cmd/+"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    return make_fleet(tmp_path_factory.mktemp("pki"), ["dev1", "dev2", "group", "_consumers", "dev1/cmd"])


def mqtts(cert: Path, key: Path, **more: object) -> MqttSection:
    return MqttSection(url="mqtts://127.0.0.1:8883", cert_file=cert, key_file=key, **more)  # type: ignore[arg-type]


def test_a_certificate_whose_cn_is_the_device_id_passes(fleet):
    check_certificate_identity(mqtts(*fleet.clients["dev1"]), "dev1")


def test_a_certificate_of_another_device_is_refused_naming_both(fleet):
    with pytest.raises(SessionConfigError, match=r"'dev2'.*'dev1'"):
        check_certificate_identity(mqtts(*fleet.clients["dev2"]), "dev1")


@pytest.mark.parametrize("common_name", ["group", "_consumers", "dev1/cmd"])
def test_a_certificate_whose_cn_is_no_device_id_is_refused(fleet, common_name: str):
    with pytest.raises(SessionConfigError, match=r"its CN .*device 'dev1'"):
        check_certificate_identity(mqtts(*fleet.clients[common_name]), "dev1")


def test_with_a_username_the_cn_is_not_the_identity_and_is_not_checked(fleet):
    check_certificate_identity(mqtts(*fleet.clients["dev2"], username="dev1"), "dev1")


def test_the_agent_refuses_to_start_with_another_device_s_certificate(tmp_path, demo_dir, fleet):
    cert, key = fleet.clients["dev2"]
    config = agent_config(tmp_path, demo_dir, "mqtts://127.0.0.1:8883",
                          mqtt={"ca_file": str(fleet.ca), "cert_file": str(cert), "key_file": str(key)})
    run = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 1
    assert "cannot start" in run.stderr and "'dev2'" in run.stderr and "'dev1'" in run.stderr


# --- the shipped device ACL on a real mosquitto --------------------------------------------


@pytest.fixture
def fleet_broker(tmp_path: Path, fleet):
    broker = FleetBroker(tmp_path / "broker", fleet)
    broker.start()
    yield broker
    broker.kill()


def device_probe(broker: FleetBroker, fleet, name: str, filters: list[str]) -> MqttProbe:
    return MqttProbe(broker.device_port, filters, tls=(broker.fleet.ca, *fleet.clients[name]))


def heard(probe: MqttProbe) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in probe.snapshot() if not m.topic.startswith("probe/")]


@pytest.mark.parametrize("common_name", ["group", "_consumers", "dev1/cmd"])
def test_a_certificate_with_a_reserved_or_multi_level_cn_reaches_no_one_s_topics(
    fleet, fleet_broker, common_name: str
):
    control = MqttProbe(fleet_broker.port, ["edge/#"], username=CONTROL[0], password=CONTROL[1])
    reach = ["edge/group/lab/cmd/ping", "edge/dev1/cmd/ping", "edge/_consumers/g/i1"]
    intruder = device_probe(fleet_broker, fleet, common_name, [*reach, "edge/group/#", "edge/_consumers/#"])
    try:
        for topic in reach:
            intruder.publish(topic, f"from {common_name}".encode())
        for topic in reach:  # what the control plane and the consumers really send there
            control.publish(topic, b"from the control plane")
        marker = "edge/dev2/cmd/marker"
        control.publish(marker, b"")
        control.wait_for(lambda m: m.topic == marker, what="the control plane's own marker")
        time.sleep(SETTLE_S)
        # Every device reads group commands (a group is not secret); a reserved CN not even those.
        readable = [] if common_name in RESERVED_SEGMENTS else [(reach[0], b"from the control plane")]
        assert heard(intruder) == readable
        assert [t for t, p in heard(control) if p.startswith(b"from ") and b"control" not in p] == []
    finally:
        intruder.close()
        control.close()


def test_a_device_publishes_every_topic_of_its_tree_and_reads_its_own_and_group_commands(
    fleet, fleet_broker
):
    topics = Topics("edge", "dev2")
    own = [topics.status, topics.model, topics.deployment, f"{topics.base}/cameras", topics.reply,
           topics.events, topics.telemetry("health"), f"{topics.base}/counts/front",
           f"{topics.base}/results/front"]
    control = MqttProbe(fleet_broker.port, ["edge/dev2/#"], username=CONTROL[0], password=CONTROL[1])
    device = device_probe(fleet_broker, fleet, "dev2", topics.command_filters(["lab"]))
    try:
        for topic in own:
            device.publish(topic, b"{}")
        control.publish(topics.command("ping"), b"own")
        control.publish(topics.group_command("lab", "ping"), b"group")
        device.wait_for(lambda m: m.payload == b"group", what="a group command at the device")
        control.wait_for(lambda m: m.topic == own[-1], what="the device's last publish")
        assert [t for t, _ in heard(control) if t in own] == own
        assert [p for _, p in heard(device)] == [b"own", b"group"]
    finally:
        device.close()
        control.close()


def test_the_telemetry_user_takes_part_in_shared_consumer_digests_but_sends_no_command(
    fleet, fleet_broker
):
    digests = f"edge/{CONSUMERS_SEGMENT}/watchers/+"
    first = MqttProbe(fleet_broker.port, [digests, "edge/dev2/cmd/#"], username=TELEMETRY[0],
                      password=TELEMETRY[1])
    second = MqttProbe(fleet_broker.port, [digests], username=TELEMETRY[0], password=TELEMETRY[1])
    control = MqttProbe(fleet_broker.port, ["edge/dev2/cmd/#"], username=CONTROL[0], password=CONTROL[1])
    try:
        second.publish(f"edge/{CONSUMERS_SEGMENT}/watchers/second", b"digest")
        first.wait_for(lambda m: m.payload == b"digest", what="the peer's digest")
        first.publish("edge/dev2/cmd/ping", b"from telemetry")
        control.publish("edge/dev2/cmd/marker", b"")
        control.wait_for(lambda m: m.topic == "edge/dev2/cmd/marker", what="the marker")
        assert [t for t, _ in heard(control)] == ["edge/dev2/cmd/marker"]
    finally:
        for probe in (first, second, control):
            probe.close()
