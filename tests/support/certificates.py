"""A throwaway certificate authority for TLS tests: CA, server (127.0.0.1) and client certs."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Fleet", "TlsFiles", "make_certificates", "make_fleet"]

VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    subject: str, ca_key: ec.EllipticCurvePrivateKey, issuer: x509.Name, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, ca_key


def make_certificates(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("edge-agent test CA")
    files = TlsFiles(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for subject, cert_path, key_path, server in (
        ("127.0.0.1", files.server_cert, files.server_key, True),
        ("cam-7", files.client_cert, files.client_key, False),
    ):
        cert, key = _issue(subject, ca_key, ca_cert.subject, server=server)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    return files


@dataclass(frozen=True)
class Fleet:
    """A fleet CA, the broker's certificate, and client certificates by common name."""

    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]
    """Common name -> (certificate, key); ``rogue`` is signed by another CA."""


def make_fleet(folder: Path, names: list[str]) -> Fleet:
    """Certificates for a broker and devices ``names`` (CN = name), plus a ``rogue`` client
    whose certificate comes from a CA the broker does not trust. A name that is not safe as a
    file name (``dev1/cmd``, ``_consumers``) gets files named ``cn-<n>``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("edge fleet test CA")
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server, server_key = _issue("127.0.0.1", ca_key, ca_cert.subject, server=True)
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, folder / "server.key")
    other_cert, other_key = _make_ca("someone else's CA")
    clients: dict[str, tuple[Path, Path]] = {}
    for name, (issuer_cert, issuer_key) in [*((n, (ca_cert, ca_key)) for n in names),
                                            ("rogue", (other_cert, other_key))]:
        cert, key = _issue(name, issuer_key, issuer_cert.subject, server=False)
        stem = name if name.isalnum() or name.replace("-", "").isalnum() else f"cn-{len(clients)}"
        paths = (folder / f"{stem}.pem", folder / f"{stem}.key")
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, paths[1])
        clients[name] = paths
    return Fleet(folder / "ca.pem", folder / "server.pem", folder / "server.key", clients)
