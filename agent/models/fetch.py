"""Fetch a model artifact: streamed, size-limited, hashed and signature-checked before use.

The artifact is written to a temporary file under the store (same filesystem, so
it can be renamed), hashed while it streams, and checked against the expected
sha256 and, when the agent holds a public key, an ed25519 signature over the
artifact's bytes. Nothing is unpacked or loaded before both checks pass.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

__all__ = [
    "FetchError",
    "Fetched",
    "fetch_artifact",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "sign_bytes",
    "verify_artifact",
    "verify_signature",
]

CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 15.0
PROGRESS_STEP = 0.05
"""Report progress each time another 5% has arrived."""

Progress = Callable[[int, int | None], None]


class FetchError(RuntimeError):
    """The artifact could not be fetched or failed verification; ``code`` names the step."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str


def _open(url: str, allowed: tuple[str, ...]) -> tuple[object, int | None]:
    scheme = urlsplit(url).scheme
    if scheme not in allowed:
        raise FetchError("scheme_not_allowed", f"URL scheme {scheme or '(none)'!r} is not allowed; allowed: {', '.join(allowed)}")
    if scheme == "file":
        path = Path(unquote(urlsplit(url).path))
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise FetchError("unreachable", f"{path}: {exc.strerror}") from exc
        return handle, path.stat().st_size
    try:
        response = urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise FetchError("http_error", f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError("unreachable", f"{url}: cannot connect: {reason}") from exc
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def fetch_artifact(
    url: str,
    *,
    dest_dir: Path,
    max_bytes: int,
    allowed_schemes: tuple[str, ...] = ("http", "https", "file"),
    progress: Progress | None = None,
) -> Fetched:
    """Download ``url`` into ``dest_dir``, hashing as it streams; the caller owns the file."""
    stream, total = _open(url, allowed_schemes)
    if total is not None and total > max_bytes:
        stream.close()  # type: ignore[attr-defined]
        raise FetchError("too_large", f"artifact is {total} bytes, over the limit of {max_bytes}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".download-", dir=dest_dir)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    next_report = 0.0
    try:
        with os.fdopen(fd, "wb") as out, stream:  # type: ignore[attr-defined]
            while chunk := stream.read(CHUNK):  # type: ignore[attr-defined]
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"artifact exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
                if progress is not None and (total is None or size / total >= next_report):
                    progress(size, total)
                    next_report = size / total + PROGRESS_STEP if total else 0.0
            out.flush()
            os.fsync(out.fileno())
        if total is not None and size != total:
            raise FetchError("truncated", f"download ended after {size} of {total} bytes")
    except FetchError:
        path.unlink(missing_ok=True)
        raise
    except OSError as exc:
        path.unlink(missing_ok=True)
        code = "disk_full" if exc.errno == 28 else "io_error"
        raise FetchError(code, f"writing the artifact failed: {exc.strerror or exc}") from exc
    except Exception as exc:  # http.client.IncompleteRead and friends during the stream
        path.unlink(missing_ok=True)
        raise FetchError("truncated", f"download broke off after {size} bytes: {exc}") from exc
    return Fetched(path, size, digest.hexdigest())


def verify_artifact(
    fetched: Fetched, *, sha256: str, public_key: Ed25519PublicKey | None, signature: str | None
) -> None:
    """Check the hash, then the signature when the agent holds a key; removes the file on failure."""
    try:
        if fetched.sha256 != sha256.lower():
            raise FetchError("hash_mismatch", f"sha256 is {fetched.sha256}, the deploy said {sha256.lower()}")
        if public_key is not None:
            if not signature:
                raise FetchError(
                    "signature_missing", "this agent requires signed artifacts and the deploy carries no signature"
                )
            verify_signature(public_key, fetched.path, signature)
    except FetchError:
        fetched.path.unlink(missing_ok=True)
        raise


def verify_signature(public_key: Ed25519PublicKey, path: Path, signature_b64: str) -> None:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError) as exc:
        raise FetchError("bad_signature", "signature is not valid base64") from exc
    try:
        public_key.verify(signature, path.read_bytes())
    except InvalidSignature as exc:
        raise FetchError("bad_signature", "ed25519 signature does not match the artifact") from exc


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an ed25519 private key")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def sign_bytes(private_key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(private_key.sign(data)).decode("ascii")
