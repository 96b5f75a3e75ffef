"""From [mqtt] settings to a connection: URL, password, TLS files; each mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.config import MqttSection
from agent.mqtt.settings import (
    BrokerAddress,
    SessionConfigError,
    parse_broker_url,
    read_password,
    tls_parameters,
)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mqtt://broker.local", BrokerAddress("broker.local", 1883, False)),
        ("mqtts://broker.local", BrokerAddress("broker.local", 8883, True)),
        ("mqtt://10.0.0.2:2883/", BrokerAddress("10.0.0.2", 2883, False)),
    ],
)
def test_broker_urls_give_host_port_and_tls(url, address):
    assert parse_broker_url(url) == address


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("embedded", "embedded"),
        ("http://host", "not mqtt://"),
        ("mqtt://user:pw@host", "credentials"),
        ("mqtt://host/path", "path"),
        ("mqtt://host:99999", "invalid port"),
    ],
)
def test_unusable_urls_are_refused_by_name(url, complaint):
    with pytest.raises(SessionConfigError, match=complaint):
        parse_broker_url(url)


def test_password_file_is_read_without_its_newline(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert read_password(MqttSection(username="dev", password_file=secret), {}) == "s3cret"


def test_password_comes_from_the_systemd_credentials_directory(tmp_path: Path):
    (tmp_path / "mqtt-password").write_text("from-systemd")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_password(MqttSection(username="dev"), environ) == "from-systemd"


def test_no_password_configured_is_none(tmp_path: Path):
    assert read_password(MqttSection(), {}) is None
    assert read_password(MqttSection(), {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None


@pytest.mark.parametrize(
    ("content", "username", "complaint"),
    [(None, "dev", "cannot read"), ("\n", "dev", "is empty"), ("pw", None, "username")],
)
def test_unusable_passwords_are_refused_naming_the_file(
    tmp_path: Path, content, username, complaint
):
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(SessionConfigError, match=complaint) as caught:
        read_password(MqttSection(username=username, password_file=secret), {})
    assert str(secret) in str(caught.value)


def test_tls_parameters_for_mqtts_with_client_certificate(tmp_path: Path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
    settings = MqttSection(
        url="mqtts://h",
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "cert.pem",
        key_file=tmp_path / "key.pem",
    )
    params = tls_parameters(settings, parse_broker_url(settings.url))
    assert params is not None
    assert (params.ca_certs, params.certfile, params.keyfile) == tuple(
        str(tmp_path / n) for n in ("ca.pem", "cert.pem", "key.pem")
    )


def test_mqtts_without_files_uses_the_system_cas():
    params = tls_parameters(MqttSection(url="mqtts://h"), parse_broker_url("mqtts://h"))
    assert params is not None and params.ca_certs is None


def test_plain_mqtt_has_no_tls_and_refuses_tls_files(tmp_path: Path):
    assert tls_parameters(MqttSection(url="mqtt://h"), parse_broker_url("mqtt://h")) is None
    settings = MqttSection(url="mqtt://h", ca_file=tmp_path / "ca.pem")
    with pytest.raises(SessionConfigError, match="ca_file set but url is mqtt://"):
        tls_parameters(settings, parse_broker_url(settings.url))


def test_missing_tls_files_and_a_key_without_certificate_are_refused(tmp_path: Path):
    missing = MqttSection(url="mqtts://h", ca_file=tmp_path / "nope.pem")
    with pytest.raises(SessionConfigError, match=r"ca_file .*nope\.pem: no such file"):
        tls_parameters(missing, parse_broker_url(missing.url))
    (tmp_path / "key.pem").write_text("pem")
    lone_key = MqttSection(url="mqtts://h", key_file=tmp_path / "key.pem")
    with pytest.raises(SessionConfigError, match="key_file is set but cert_file is not"):
        tls_parameters(lone_key, parse_broker_url(lone_key.url))
