"""Command authority: with a control-plane key configured, only signed commands are done.

A signed command is the usual command object plus three fields: ``ts`` (the sender's
unix time, seconds), ``nonce`` (16-128 characters of ``A-Z a-z 0-9 _ -``, never used
twice) and ``command_signature`` (base64 of the 64-byte ed25519 signature). The
signature covers the bytes::

    b"edge-agent command v1\\n" + topic + b"\\n" + canonical JSON of the command

where ``topic`` is the full topic the command is published to (so a command signed
for one device or one command name cannot be replayed onto another), and the
canonical JSON is the command object without ``command_signature``, keys sorted,
separators ``(",", ":")``, non-ASCII characters as UTF-8 (Python's
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).

A command is refused, in this order of checks, as ``unsigned`` (no signature, ts or
nonce), ``bad_signature`` (a signing field malformed), ``bad_payload`` (no canonical
form: a lone surrogate or a number too large for a float), ``bad_signature`` (the
signature does not verify), ``stale`` (``ts`` further than ``max_clock_skew_s`` from the device clock)
or ``replayed`` (its nonce was seen within the window). Nonces are remembered
until their command could no longer pass the clock check, bounded in number,
and saved in the state directory so a restart does not reopen the window.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agent.mqtt.errors import MqttError
from agent.wire import MAX_COMMAND_BYTES, MAX_ID_LENGTH, CommandError, ErrorCode

__all__ = [
    "DOMAIN",
    "MAX_REMEMBERED_NONCES",
    "NONCE_PATTERN",
    "SIGNATURE_FIELD",
    "AuthorityError",
    "CommandAuthority",
    "NonceCache",
    "SignedFields",
    "canonical_command",
    "load_command_key",
    "parse_document",
    "sign_command",
    "signed_message",
    "verify_command",
]

log = structlog.get_logger(__name__)

DOMAIN = b"edge-agent command v1\n"
"""Prefixed to what is signed, so a command signature can never pass as any other."""
SIGNATURE_FIELD = "command_signature"
"""Not ``signature``: a deploy command's ``signature`` is the artifact's."""
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")
NONCE_BYTES = 18
"""``sign_command`` draws 18 random bytes: 24 base64url characters, 144 bits."""
SIGNATURE_BYTES = 64
MAX_REMEMBERED_NONCES = 100_000
"""Beyond this many live nonces the ones expiring soonest are forgotten (and it is logged)."""


class AuthorityError(MqttError, CommandError):
    """A command is refused because it is not proven to come from the control plane, now."""


@dataclass(frozen=True)
class SignedFields:
    ts: float
    nonce: str


def _usable_id(command_id: object) -> bool:
    """A reply can echo it: text of 1-128 printable characters that UTF-8 can encode."""
    if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH:
        return False
    try:
        command_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return command_id.isprintable()


def _refuse(code: ErrorCode, message: str, document: Any) -> AuthorityError:
    command_id = document.get("id") if isinstance(document, dict) else None
    usable = isinstance(command_id, str) and _usable_id(command_id)
    return AuthorityError(code, message, command_id if usable else None)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_document(payload: bytes) -> Any:
    """The JSON of a command, strictly: no duplicate keys, no NaN/Infinity, bounded size.

    Strict because the signature is checked on what this returns: two parsers must
    not be able to read different commands out of one payload.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(
            "payload_too_large", f"{len(payload)} bytes, at most {MAX_COMMAND_BYTES} accepted"
        )
    try:
        return json.loads(payload, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CommandError("bad_json", f"not valid JSON: {exc}") from None


def canonical_command(document: Mapping[str, Any]) -> bytes:
    """The command without its signature: sorted keys, no spaces, UTF-8."""
    unsigned = {key: value for key, value in document.items() if key != SIGNATURE_FIELD}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


def signed_message(topic: str, document: Mapping[str, Any]) -> bytes:
    """The exact bytes an ed25519 command signature covers."""
    return DOMAIN + topic.encode("utf-8") + b"\n" + canonical_command(document)


def sign_command(
    payload: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
    *,
    topic: str,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """The command signed for ``topic``; ``ts`` and ``nonce`` are added unless present."""
    document = {key: value for key, value in payload.items() if key != SIGNATURE_FIELD}
    document.setdefault("ts", int(time.time() if now is None else now))
    document.setdefault("nonce", nonce or secrets.token_urlsafe(NONCE_BYTES))
    signature = private_key.sign(signed_message(topic, document))
    document[SIGNATURE_FIELD] = base64.b64encode(signature).decode("ascii")
    return document


def verify_command(
    document: Any, topic: str, public_key: Ed25519PublicKey, *, now: float, max_skew_s: float
) -> SignedFields:
    """Check signature and freshness of a parsed command (pure); raises AuthorityError."""
    if not isinstance(document, dict):
        raise _refuse("unsigned", "a signed command is a JSON object", document)
    missing = [f for f in (SIGNATURE_FIELD, "ts", "nonce") if document.get(f) is None]
    if missing:
        raise _refuse("unsigned", f"this agent only takes signed commands; missing: "
                      f"{', '.join(missing)}", document)
    ts, nonce, encoded = document["ts"], document["nonce"], document[SIGNATURE_FIELD]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise _refuse("bad_signature", "field 'ts' must be a number (unix time, seconds)", document)
    if not isinstance(nonce, str) or not NONCE_PATTERN.fullmatch(nonce):
        raise _refuse("bad_signature", "field 'nonce' must be 16-128 characters of "
                      "A-Z a-z 0-9 _ -", document)
    try:
        signature = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != SIGNATURE_BYTES:
        raise _refuse("bad_signature", f"field '{SIGNATURE_FIELD}' must be base64 of "
                      f"{SIGNATURE_BYTES} bytes", document)
    try:
        message = signed_message(topic, document)
    except ValueError as exc:  # a lone surrogate (UTF-8 cannot encode it) or 1e400 (infinite)
        raise _refuse("bad_payload", f"the command has no canonical form to verify: {exc}",
                      document) from None
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise _refuse("bad_signature", f"the signature does not match this command on {topic}",
                      document) from None
    skew = float(ts) - now
    if abs(skew) > max_skew_s:
        where = "behind" if skew < 0 else "ahead of"
        raise _refuse("stale", f"ts is {abs(skew):.0f} s {where} the device clock; at most "
                      f"{max_skew_s:.0f} s either way is accepted", document)
    return SignedFields(float(ts), nonce)


class NonceCache:
    """Nonces of accepted commands, each kept until its command would be stale anyway.

    Saved to ``path`` (atomically) after each change when given.
    """

    def __init__(self, window_s: float, path: Path | None = None,
                 capacity: int = MAX_REMEMBERED_NONCES) -> None:
        self.window_s = window_s
        self.path = path
        self.capacity = capacity
        self._expiry: dict[str, float] = {}
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._expiry)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("nonce_cache_unreadable", path=str(path), error=str(exc))
            return
        if isinstance(data, dict):
            self._expiry = {str(k): float(v) for k, v in data.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as handle:
                json.dump(self._expiry, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # still remembered in memory for the window
            log.warning("nonce_cache_not_saved", path=str(self.path), error=str(exc))

    def _purge(self, now: float) -> None:
        for nonce in [n for n, expiry in self._expiry.items() if expiry < now]:
            del self._expiry[nonce]
        excess = len(self._expiry) - self.capacity + 1
        if excess > 0:
            log.warning("nonce_cache_full", capacity=self.capacity, forgotten=excess)
            for nonce in sorted(self._expiry, key=self._expiry.__getitem__)[:excess]:
                del self._expiry[nonce]

    def remember(self, signed: SignedFields, now: float, document: Any = None) -> None:
        """Record a nonce; raises AuthorityError ``replayed`` when it is still remembered."""
        self._purge(now)
        if signed.nonce in self._expiry:
            raise _refuse("replayed", f"nonce {signed.nonce!r} was already used", document)
        self._expiry[signed.nonce] = signed.ts + self.window_s
        self._save()


class CommandAuthority:
    """Admits a command payload on a topic, or raises AuthorityError/CommandError naming why."""

    def __init__(self, public_key: Ed25519PublicKey, max_skew_s: float, nonces: NonceCache,
                 clock: Callable[[], float] = time.time) -> None:
        self.public_key = public_key
        self.max_skew_s = max_skew_s
        self.nonces = nonces
        self._clock = clock

    def admit(self, topic: str, payload: bytes) -> None:
        document = parse_document(payload)
        now = self._clock()
        signed = verify_command(document, topic, self.public_key, now=now,
                                max_skew_s=self.max_skew_s)
        self.nonces.remember(signed, now, document)


def load_command_key(path: Path) -> Ed25519PublicKey:
    """The control plane's ed25519 public key (PEM); ValueError naming the file otherwise."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"command public key {path}: cannot read it: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"command public key {path}: not an ed25519 public key")
    return key
