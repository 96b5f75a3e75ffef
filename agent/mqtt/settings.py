"""From the ``[mqtt]`` config section to what a connection needs: address, TLS, credentials.

Pure apart from reading the password and checking that certificate files exist,
so that a wrong setting is an error naming it before any connection is tried.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from aiomqtt import TLSParameters
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.core import BrokerAddress, BrokerUrlError, MqttSection
from agent.core import parse_broker_url as broker_address
from agent.mqtt.errors import MqttError
from agent.wire import TopicError, check_device_id

__all__ = [
    "CREDENTIAL_NAME",
    "BrokerAddress",
    "SessionConfigError",
    "check_certificate_identity",
    "parse_broker_url",
    "read_password",
    "tls_parameters",
]

CREDENTIAL_NAME = "mqtt-password"
"""The file name looked up in ``$CREDENTIALS_DIRECTORY`` (systemd LoadCredential=)."""


class SessionConfigError(MqttError, ValueError):
    """The MQTT settings cannot make a connection; the message names the setting."""


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; credentials never go in the URL.

    The check is the config's (agent.core.config.parse_broker_url, which ``[mqtt] url`` passed
    when the file was read); here its refusal is a SessionConfigError like every other setting's.
    """
    try:
        return broker_address(url)
    except BrokerUrlError as exc:
        raise SessionConfigError(str(exc)) from None


def read_password(settings: MqttSection, environ: Mapping[str, str] | None = None) -> str | None:
    """The password from ``password_file``, else ``$CREDENTIALS_DIRECTORY/mqtt-password``.

    None when neither is configured or present. A trailing newline is not part of it.
    """
    environ = os.environ if environ is None else environ
    path = settings.password_file
    if path is None:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory or not (Path(directory) / CREDENTIAL_NAME).is_file():
            return None
        path = Path(directory) / CREDENTIAL_NAME
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionConfigError(f"password file {path}: cannot read: {exc}") from None
    if not password:
        raise SessionConfigError(f"password file {path}: is empty")
    if settings.username is None:
        raise SessionConfigError(f"password file {path} is set but [mqtt] username is not")
    return password


def tls_parameters(settings: MqttSection, address: BrokerAddress) -> TLSParameters | None:
    """TLS for ``mqtts://``: ca_file (else the system CAs) and an optional client certificate."""
    files = {
        "ca_file": settings.ca_file,
        "cert_file": settings.cert_file,
        "key_file": settings.key_file,
    }
    given = {key: path for key, path in files.items() if path is not None}
    if not address.tls:
        if given:
            names = ", ".join(sorted(given))
            raise SessionConfigError(f"{names} set but url is mqtt://: use mqtts:// for TLS")
        return None
    for key, path in given.items():
        if not path.is_file():
            raise SessionConfigError(f"{key} {path}: no such file")
    if settings.key_file is not None and settings.cert_file is None:
        raise SessionConfigError("key_file is set but cert_file is not")
    return TLSParameters(
        ca_certs=str(settings.ca_file) if settings.ca_file else None,
        certfile=str(settings.cert_file) if settings.cert_file else None,
        keyfile=str(settings.key_file) if settings.key_file else None,
    )


def check_certificate_identity(settings: MqttSection, device_id: str) -> None:
    """With a client certificate and no username, the broker takes the certificate's CN as
    the MQTT username (``use_identity_as_username``) and the device ACL gives that name its
    topics: the CN must be a valid device id and this agent's ``device_id``."""
    path = settings.cert_file
    if path is None or settings.username is not None:
        return
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SessionConfigError(f"cert_file {path}: cannot read a PEM certificate: {exc}") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise SessionConfigError(f"cert_file {path}: has {len(names)} common names (CN), one "
                                 f"is needed: the device id {device_id!r}")
    common_name = names[0].value
    common_name = common_name if isinstance(common_name, str) else common_name.decode("utf-8", "replace")
    try:
        check_device_id(common_name, "its CN")
    except TopicError as exc:
        raise SessionConfigError(f"cert_file {path}: {exc}; the broker would take it as the "
                                 f"username of device {device_id!r}") from None
    if common_name != device_id:
        raise SessionConfigError(
            f"cert_file {path}: its CN {common_name!r} is not the device id {device_id!r} "
            "([agent] device_id): the broker takes the CN as the username and gives it only "
            f"edge/{common_name}/..., so this agent would be refused everywhere")
