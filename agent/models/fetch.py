"""Fetch a model artifact: streamed, size-limited, time-limited, hashed, and bound to a signed statement.

The artifact is written to a temporary file under the store (same filesystem, so
it can be renamed) and hashed while it streams, in a daemon thread that the
agent can stop at any moment (a deadline or SIGTERM shuts the socket under a
blocked read). Nothing is unpacked or loaded before the hash matches.

When the agent holds a public key, the deploy must carry a *signed statement*
(name, version, format, sha256, expiry): the signature covers what the artifact
is claimed to be, not only its bytes, so an old signed artifact cannot be
deployed as another version. The statement is checked against the deploy's
fields before anything is downloaded; the bytes are then bound to it by sha256.

``file://`` reads only inside configured folders (symlinks resolved first).
URLs are echoed only through ``redact_url``: presigned tokens never leave.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hashlib
import http.client
import json
import os
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

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

from agent.core import CodedError
from agent.models.errors import ModelError

__all__ = [
    "STATEMENT_VALID_S",
    "DownloadAbort",
    "FetchError",
    "Fetched",
    "Statement",
    "download",
    "fetch_artifact",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "redact_url",
    "sign_file",
    "sign_statement",
    "verify_artifact",
    "verify_statement",
]

CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 15.0
"""A server silent for this long (connect, headers, or between two reads) is given up on."""
PROGRESS_STEP = 0.05
"""Report progress each time another 5% has arrived."""
REDACTED = "REDACTED"
STATEMENT_DOMAIN = b"edge-agent artifact statement v1\n"
"""Prefixed to the signed bytes, so a statement signature can never be taken for any other signature."""
STATEMENT_FIELDS = ("name", "version", "format", "sha256", "expires")
STATEMENT_VALID_S = 30 * 86_400
"""Default life of a signed statement: long enough for a staged rollout or a device offline for weeks,
short enough that a leaked or superseded statement stops working by itself."""

Progress = Callable[[int, int | None], None]


class FetchError(ModelError, CodedError, RuntimeError):
    """The artifact could not be fetched or failed verification; ``code`` names the step."""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Fetched:
    """A downloaded artifact: its temporary file, size and sha256."""

    path: Path
    size: int
    sha256: str


def redact_url(url: str) -> str:
    """``url`` fit to echo (replies, retained state, events, logs): no user info, query or fragment.

    Presigned URLs carry their token there; the scheme, host and path stay to tell which artifact it was.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = f"{REDACTED}@{netloc}"
    except ValueError:
        return f"<{REDACTED} unparseable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "",
                       REDACTED if parts.fragment else ""))


class DownloadAbort:
    """Stops one download from another thread: records why and shuts its sockets so a blocked read returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.reason: FetchError | None = None

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.reason is not None
        if fired:
            _shut(sock)

    def fire(self, reason: FetchError) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def check(self) -> None:
        if self.reason is not None:
            raise self.reason


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or never connected: nothing left to unblock
        sock.shutdown(socket.SHUT_RDWR)


def _watched(base: type[http.client.HTTPConnection], abort: DownloadAbort) -> Callable[..., Any]:
    """``base`` whose socket is handed to ``abort`` as soon as it exists (before TLS and headers)."""

    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        connection = base(*args, **kwargs)

        def create(*cargs: Any, **ckwargs: Any) -> socket.socket:
            sock = socket.create_connection(*cargs, **ckwargs)
            abort.watch(sock)
            return sock

        connection._create_connection = create  # type: ignore[attr-defined]  # http.client's hook, private
        return connection

    return make


def _handlers(abort: DownloadAbort) -> list[urllib.request.BaseHandler]:
    """urllib's http and https handlers on connections whose sockets ``abort`` can shut."""

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_watched(http.client.HTTPConnection, abort), req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_watched(http.client.HTTPSConnection, abort), req)

    return [Plain(), Secure()]


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a scheme the agent allows (never https -> http, never file or ftp)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.allowed = tuple(s for s in allowed if s in ("http", "https"))

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        target = headers.get("location") or headers.get("uri")
        if target:
            newurl = urljoin(req.full_url, target)
            scheme, came_from = urlsplit(newurl).scheme, urlsplit(req.full_url).scheme
            if scheme not in self.allowed or (came_from == "https" and scheme != "https"):
                fp.close()
                raise FetchError("redirect_not_allowed",
                                 f"the server redirected to {redact_url(newurl)}: scheme {scheme or '(none)'!r} is "
                                 f"not allowed from {came_from}:// (allowed: {', '.join(self.allowed)})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _inside(path: str, roots: Sequence[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(Path(os.path.realpath(root))) for root in roots)


def _open_file(url: str, roots: Sequence[Path]) -> tuple[BinaryIO, int]:
    """A local artifact, only inside ``roots`` (after symlinks), only a regular file."""
    parts = urlsplit(url)
    if not roots:
        raise FetchError("file_not_allowed",
                         "file:// URLs are off on this agent; list the folders they may read in [deploy] file_roots")
    if parts.netloc not in ("", "localhost"):
        raise FetchError("file_not_allowed", "a file:// URL must name no host (or localhost): it reads this device")
    raw = unquote(parts.path)
    if "\0" in raw or not raw.startswith("/") or not _inside(raw, roots):
        raise FetchError("file_not_allowed", "the file:// path is outside the folders [deploy] file_roots allows")
    try:
        fd = os.open(os.path.realpath(raw), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FetchError("unreachable", f"{raw}: {exc.strerror}") from exc
    handle = os.fdopen(fd, "rb")
    opened = f"/proc/self/fd/{fd}"  # the file actually opened: a path swapped after the check is caught
    if (os.path.exists(opened) and not _inside(opened, roots)) or not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise FetchError("file_not_allowed", f"{raw} is not a regular file inside [deploy] file_roots")
    return handle, os.fstat(fd).st_size


def _open(url: str, allowed: Sequence[str], roots: Sequence[Path], abort: DownloadAbort) -> tuple[BinaryIO, int | None]:
    scheme = urlsplit(url).scheme
    if scheme not in allowed:
        raise FetchError("scheme_not_allowed",
                         f"URL scheme {scheme or '(none)'!r} is not allowed; allowed: {', '.join(allowed)}")
    if scheme == "file":
        return _open_file(url, roots)
    opener = urllib.request.build_opener(*_handlers(abort), _Redirects(allowed))
    shown = redact_url(url)
    try:
        response = opener.open(url, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        abort.check()
        raise FetchError("http_error", f"{shown}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        abort.check()
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FetchError):
            raise reason from exc
        raise FetchError("unreachable", f"{shown}: cannot connect: {reason}") from exc
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def fetch_artifact(
    url: str,
    *,
    dest_dir: Path,
    max_bytes: int,
    allowed_schemes: Sequence[str] = ("http", "https"),
    file_roots: Sequence[Path] = (),
    deadline_s: float | None = None,
    abort: DownloadAbort | None = None,
    progress: Progress | None = None,
) -> Fetched:
    """Download ``url`` into ``dest_dir``, hashing as it streams; the caller owns the file.

    ``deadline_s`` bounds the whole download (connect to last byte); ``abort`` stops it from another thread.
    """
    abort = abort or DownloadAbort()
    timer = None
    if deadline_s is not None:
        timer = threading.Timer(deadline_s, abort.fire, (FetchError(
            "download_timeout", f"the download did not finish within {deadline_s:g} s (deploy.download_timeout_s)"),))
        timer.daemon = True
        timer.start()
    try:
        return _fetch(url, dest_dir, max_bytes, allowed_schemes, file_roots, abort, progress)
    finally:
        if timer is not None:
            timer.cancel()


def _fetch(url: str, dest_dir: Path, max_bytes: int, allowed: Sequence[str], roots: Sequence[Path],
           abort: DownloadAbort, progress: Progress | None) -> Fetched:
    stream, total = _open(url, allowed, roots, abort)
    if total is not None and (total > max_bytes or total == 0):
        stream.close()
        if total == 0:
            raise FetchError("empty_artifact", "the artifact is empty (0 bytes)")
        raise FetchError("too_large", f"artifact is {total} bytes, over the limit of {max_bytes}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".download-", dir=dest_dir)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    next_report = 0.0
    try:
        with os.fdopen(fd, "wb") as out, stream:
            while chunk := stream.read(CHUNK):
                abort.check()
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"artifact exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                _write(out.write, chunk)
                if progress is not None and (not total or size / total >= next_report):
                    progress(size, total)
                    next_report = size / total + PROGRESS_STEP if total else 0.0
            abort.check()
            _write(out.flush)
            _write(os.fsync, out.fileno())
        if size == 0:
            raise FetchError("empty_artifact", "the artifact is empty (0 bytes)")
        if total is not None and size != total:
            raise FetchError("truncated", f"download ended after {size} of {total} bytes")
    except FetchError:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # http.client.IncompleteRead, resets and timeouts during the stream
        path.unlink(missing_ok=True)
        abort.check()
        raise FetchError("truncated", f"download broke off after {size} bytes: {exc}") from exc
    return Fetched(path, size, digest.hexdigest())


def _write(step: Callable[..., Any], *args: Any) -> None:
    """A write to the artifact's file: its failure is the disk's, told apart from the network's."""
    try:
        step(*args)
    except OSError as exc:
        code = "disk_full" if exc.errno == errno.ENOSPC else "io_error"
        raise FetchError(code, f"writing the artifact failed: {exc.strerror or exc}") from exc


async def download(url: str, *, abort: DownloadAbort, **options: Any) -> Fetched:
    """``fetch_artifact`` in a daemon thread: a stopping agent never waits for it (``abort`` ends it)."""
    future: Future[Fetched] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled before it began
        try:
            fetched = fetch_artifact(url, abort=abort, **options)
        except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
            future.set_exception(exc)
        else:
            future.set_result(fetched)

    threading.Thread(target=work, name="model-download", daemon=True).start()
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        abort.fire(FetchError("cancelled", "the deployment was cancelled (the agent is stopping)"))
        raise


def verify_artifact(fetched: Fetched, *, sha256: str) -> None:
    """Check the streamed hash; removes the file on failure. The reply never carries the file's real hash."""
    if fetched.sha256 != sha256.lower():
        fetched.path.unlink(missing_ok=True)
        raise FetchError("hash_mismatch", f"the artifact's sha256 is not the {sha256.lower()} the deploy names")


# ----- signed statements ------------------------------------------------------------------------
@dataclass(frozen=True)
class Statement:
    """What a signer vouches for: the artifact with ``sha256`` is ``name`` ``version`` in ``format``
    until ``expires`` (unix seconds)."""

    name: str
    version: str
    format: str
    sha256: str
    expires: int

    def signed_bytes(self) -> bytes:
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return STATEMENT_DOMAIN + body.encode("ascii")


def sign_statement(private_key: Ed25519PrivateKey, statement: Statement) -> dict[str, Any]:
    """The statement with its base64 ed25519 signature: the deploy command's ``statement`` field."""
    signature = base64.b64encode(private_key.sign(statement.signed_bytes())).decode("ascii")
    return {**asdict(statement), "signature": signature}


def sign_file(private_key: Ed25519PrivateKey, path: Path, *, name: str, version: str, format: str,
              valid_s: float = STATEMENT_VALID_S) -> dict[str, Any]:
    """The signed statement of the local artifact ``path`` (hashed here), valid ``valid_s`` from now."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    expires = int(time.time() + valid_s)
    return sign_statement(private_key, Statement(name, version, format, digest.hexdigest(), expires))


def verify_statement(public_key: Ed25519PublicKey, signed: Mapping[str, Any], *, name: str, version: str,
                     format: str, sha256: str, now: float | None = None) -> Statement:
    """Signature first, then expiry, then that it names what the deploy names; raises FetchError."""
    try:
        statement = Statement(**{key: signed[key] for key in STATEMENT_FIELDS})
        signature = base64.b64decode(str(signed["signature"]), validate=True)
        if not isinstance(statement.expires, int) or not all(
                isinstance(getattr(statement, key), str) for key in STATEMENT_FIELDS[:4]):
            raise TypeError("wrong field types")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise FetchError("bad_signature", f"the statement is malformed: {exc}") from exc
    try:
        public_key.verify(signature, statement.signed_bytes())
    except InvalidSignature as exc:
        raise FetchError("bad_signature",
                         "the statement's ed25519 signature does not verify with this agent's key") from exc
    if statement.expires <= (time.time() if now is None else now):
        raise FetchError("signature_expired", f"the statement expired at unix time {statement.expires}")
    wanted = {"name": name, "version": version, "format": format, "sha256": sha256.lower()}
    for key, value in wanted.items():
        if getattr(statement, key) != value:
            raise FetchError("statement_mismatch",
                             f"the signed statement's {key} is {getattr(statement, key)!r}, the deploy says {value!r}")
    return statement


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
