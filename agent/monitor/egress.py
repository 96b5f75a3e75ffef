"""The egress guard: nothing leaves the device that is not a telemetry payload of the schema.

Every outgoing message goes through ``EgressGuard.check(suffix, payload)``
before it is published. The topic suffix (``telemetry/drift``, ``events``, ...)
picks the payload model; the message must be UTF-8 JSON no larger than a bound,
validate against its model (so an unknown field is refused), and hold no
string that looks like encoded binary (a long unbroken base64 run, a data URI,
control characters, a string longer than any telemetry text) and no array
longer than any telemetry list (a crop as nested lists of pixel values). A blocked
message is counted by reason (the counts travel in the leak payload) and is
never published.

Encoded data is looked for in several disguises: an unbroken base64 run, a
data URI, base64 or hex broken into chunks by separators (``.``, spaces,
commas: the chunks are summed, weighted by the bits a character of their
alphabet carries), numbers written out in a string (``"12,34,56,..."``), and
numbers spread over many small arrays (all numbers of a payload together).

The one image that may leave is a camera's snapshot, when its ``results.snapshots.sink`` is
``mqtt``: ``check_image(suffix, data)`` lets the bytes of one JPEG out on ``snapshots/<camera>``
only, up to ``egress_max_image_bytes``; each is counted (``images``, ``image_bytes``) in the
leak payload beside the blocked counts. Any other topic given an image, or that topic given
anything but a JPEG, is blocked (``image_topic``, ``not_jpeg``).

Replies, events and retained state are never dropped (a reply must reach the
control plane with its id, an event is an outbox entry, retained state is what
the fleet reads): ``redact()`` replaces each offending value with a marker
string (``[redacted: <reason>]``), and the count goes to ``blocked`` and
``by_reason`` as ``redacted.<reason>``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from agent.core import EgressSection
from agent.monitor.errors import MonitorError

__all__ = ["REASONS", "EgressBlocked", "EgressGuard"]

log = structlog.get_logger(__name__)

REASONS = ("unknown_topic", "too_large", "not_json", "schema", "long_string", "encoded_blob",
           "control_characters", "array", "numbers", "numeric_text", "image_topic", "not_jpeg")
IMAGE_TOPIC = re.compile(r"snapshots/[^/+#\x00]+")
"""The only topic suffix an image may leave on: one camera's snapshots."""
JPEG_START = b"\xff\xd8\xff"
"""A JPEG begins with its start-of-image marker and the first segment's marker..."""
JPEG_END = b"\xff\xd9"
"""...and ends with the end-of-image marker."""
REDACTED_PREFIX = "redacted."
"""``by_reason`` key prefix of values replaced in replies, events and retained state."""
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,", re.IGNORECASE)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MAX_NUMBERS = 2048
"""Numbers in one payload, every array and object together. The largest legitimate payload (drift
telemetry with its histograms) holds a few hundred; a 32x32 RGB crop is 3072, however it is split
into arrays of at most ``max_array_items``."""
NUMERIC_RUN = re.compile(r"(?:[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?[\s,;:|/]+){64,}")
"""64 numbers in a row in one string ("12, 34, 56, ..."): pixel values written as text. No message
the agent writes lists more than a few numbers in its text."""
SEPARATORS = re.compile(r"[\s.,;:|]+")
"""What breaks an encoded run into chunks that each look short (a dot every 100 characters)."""
DENSE_CHUNK_CHARS = 16
"""A chunk of a string this long, mixing letters and digits, counts as encoded data (words, paths and
versions are shorter, or hold few digits: see ``_dense_bits``)."""
HEX = re.compile(r"[0-9a-fA-F]+")
BASE64 = re.compile(r"[A-Za-z0-9+/=_-]+")
BITS_HEX, BITS_BASE64 = 4, 6
"""Information per character of each alphabet: a sha256 in hex is 64 characters, 256 bits."""
MARKER = "[redacted: {reason}]"
RECORD_TOPICS = ("results/",)
"""Topics whose lists of objects (a frame's boxes) are bounded per object, not as one array: a frame
may hold hundreds of boxes; an image among them is still caught by the numbers bound (MAX_NUMBERS)."""


class EgressBlocked(MonitorError):
    """An outgoing payload was refused; ``reason`` is one of REASONS."""

    def __init__(self, suffix: str, reason: str, detail: str) -> None:
        super().__init__(f"{suffix}: {reason}: {detail}")
        self.suffix = suffix
        self.reason = reason


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _records(value: Any) -> bool:
    """A non-empty list of objects: a results payload's boxes, each bounded on its own."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _arrays(value: Any, records: bool = False) -> Iterator[int]:
    """The number of leaves of every outermost list (an image as nested lists is one array);
    with ``records``, a list of objects counts per object."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item, records)
    elif records and _records(value):
        for item in value:
            yield from _arrays(item, records)
    elif isinstance(value, list):
        yield _leaves(value)


def _count(value: Any, leaf: Callable[[Any], int]) -> int:
    """``leaf`` summed over the leaves of ``value`` (lists and objects walked)."""
    if isinstance(value, list):
        return sum(_count(item, leaf) for item in value)
    if isinstance(value, dict):
        return sum(_count(item, leaf) for item in value.values())
    return leaf(value)


def _leaves(value: Any) -> int:
    return _count(value, lambda _: 1)


def _numbers(value: Any) -> int:
    return _count(value, lambda v: int(isinstance(v, (int, float)) and not isinstance(v, bool)))


def _dense_bits(text: str) -> int:
    """Bits of encoded-looking data in ``text``, its separator-broken chunks summed.

    A chunk counts when it is at least DENSE_CHUNK_CHARS of the base64 alphabet with at least one
    digit in ten characters and one letter in ten (random base64 has ~16% digits; a path such as
    ``/var/lib/edge-agent/engines/text-det/v4`` has 2%); hex-only chunks count 4 bits a character.
    """
    bits = 0
    for chunk in SEPARATORS.split(text):
        if len(chunk) < DENSE_CHUNK_CHARS or not BASE64.fullmatch(chunk):
            continue
        digits = sum(c.isdigit() for c in chunk)
        letters = sum(c.isalpha() for c in chunk)
        if digits * 10 < len(chunk) or letters * 10 < len(chunk):
            continue
        bits += len(chunk) * (BITS_HEX if HEX.fullmatch(chunk) else BITS_BASE64)
    return bits


class EgressGuard:
    """Checks (or redacts) every outgoing payload against its topic's model and the egress bounds."""

    def __init__(self, models: Mapping[str, type[BaseModel]], settings: EgressSection | None = None) -> None:
        settings = settings or EgressSection()
        self.models = dict(models)
        self.max_payload_bytes = settings.egress_max_payload_bytes
        self.max_string_chars = settings.egress_max_string_chars
        self.max_array_items = settings.egress_max_array_items
        blob_min_chars = settings.egress_blob_min_chars
        self._blob = re.compile(rf"[A-Za-z0-9+/_-]{{{blob_min_chars},}}")
        self._blob_bits = blob_min_chars * BITS_BASE64
        self._lock = threading.Lock()
        self.checked = 0
        self.blocked: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.redacted: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.max_image_bytes = settings.egress_max_image_bytes
        self.images = 0
        """Snapshots let out (``check_image``)."""
        self.image_bytes = 0

    def check(self, suffix: str, payload: bytes) -> bytes:
        """``payload`` unchanged when it may leave; EgressBlocked (counted) when not."""
        with self._lock:
            self.checked += 1
        try:
            self._inspect(suffix, payload)
        except EgressBlocked as blocked:
            with self._lock:
                self.blocked[blocked.reason] += 1
            log.warning("egress_blocked", topic=suffix, reason=blocked.reason, bytes=len(payload))
            raise
        return payload

    def check_image(self, suffix: str, data: bytes) -> bytes:
        """``data`` unchanged when it is one JPEG for ``snapshots/<camera>`` within the size bound
        (counted in ``images`` and ``image_bytes``); EgressBlocked (counted) when not."""
        with self._lock:
            self.checked += 1
        try:
            if not IMAGE_TOPIC.fullmatch(suffix):
                raise EgressBlocked(suffix, "image_topic", "images leave only on snapshots/<camera>")
            if not isinstance(data, (bytes, bytearray)) or not (data.startswith(JPEG_START)
                                                                 and data.endswith(JPEG_END)):
                raise EgressBlocked(suffix, "not_jpeg", "a snapshot is the bytes of one JPEG")
            if len(data) > self.max_image_bytes:
                raise EgressBlocked(suffix, "too_large", f"{len(data)} bytes, at most {self.max_image_bytes}")
        except EgressBlocked as blocked:
            with self._lock:
                self.blocked[blocked.reason] += 1
            log.warning("egress_blocked", topic=suffix, reason=blocked.reason, bytes=len(data))
            raise
        with self._lock:
            self.images += 1
            self.image_bytes += len(data)
        return data

    def allows(self, suffix: str, payload: bytes) -> bool:
        try:
            self.check(suffix, payload)
        except EgressBlocked:
            return False
        return True

    def counts(self) -> dict[str, Any]:
        with self._lock:
            blocked = {k: v for k, v in self.blocked.items() if v}
            blocked |= {REDACTED_PREFIX + k: v for k, v in self.redacted.items() if v}
            return {"checked": self.checked, "blocked": sum(blocked.values()), "by_reason": blocked,
                    "images": self.images, "image_bytes": self.image_bytes}

    def redact(self, suffix: str, payload: bytes) -> bytes:
        """``payload`` with every value that may not leave replaced by a marker (each counted);
        unchanged (the same object) when nothing had to go. Never refuses: for replies, events
        and retained state, which are built from the schema and must arrive."""
        with self._lock:
            self.checked += 1
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return payload
        found: list[str] = []
        cleaned = self._redact_value(document, found, suffix.startswith(RECORD_TOPICS))
        while _numbers(cleaned) > MAX_NUMBERS and self._redact_largest_array(cleaned, found):
            pass
        encoded = json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > self.max_payload_bytes and isinstance(cleaned, dict):
            for key in sorted(cleaned, key=lambda k: -len(json.dumps(cleaned[k]))):
                if isinstance(cleaned[key], (dict, list)):
                    cleaned[key] = {"_redacted": "too_large"} if isinstance(cleaned[key], dict) else []
                    found.append("too_large")
                    encoded = json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False).encode()
                    if len(encoded) <= self.max_payload_bytes:
                        break
        if not found:
            return payload
        with self._lock:
            for reason in found:
                self.redacted[reason] += 1
        log.warning("egress_redacted", topic=suffix, reasons=sorted(set(found)), values=len(found))
        return encoded

    def _redact_value(self, value: Any, found: list[str], records: bool = False) -> Any:
        if isinstance(value, str):
            reason = self._string_reason(value)
            if reason is not None:
                found.append(reason)
                return MARKER.format(reason=reason)
            return value
        if isinstance(value, list):
            if not (records and _records(value)) and _leaves(value) > self.max_array_items:
                found.append("array")
                return MARKER.format(reason="array")
            return [self._redact_value(item, found, records) for item in value]
        if isinstance(value, dict):
            cleaned: dict[str, Any] = {}
            for key, item in value.items():
                reason = self._string_reason(key)
                if reason is not None:
                    found.append(reason)
                    key = MARKER.format(reason=f"{reason} {len(cleaned)}")
                cleaned[key] = self._redact_value(item, found, records)
            return cleaned
        return value

    @staticmethod
    def _redact_largest_array(document: Any, found: list[str]) -> bool:
        """Replace the list holding the most numbers with a marker; False when there is none."""
        best: tuple[int, Any, Any] | None = None
        stack: list[Any] = [document]
        while stack:
            node = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, item in items:
                if isinstance(item, list) and (best is None or _numbers(item) > best[0]):
                    best = (_numbers(item), node, key)
                if isinstance(item, (dict, list)):
                    stack.append(item)
        if best is None or best[0] == 0:
            return False
        _, parent, key = best
        parent[key] = MARKER.format(reason="numbers")
        found.append("numbers")
        return True

    def _inspect(self, suffix: str, payload: bytes) -> None:
        model = self.models.get(suffix)
        if model is None and "/" in suffix:  # results/<camera>, counts/<camera>: registered as results/+
            model = self.models.get(suffix.rsplit("/", 1)[0] + "/+")
        if model is None:
            raise EgressBlocked(suffix, "unknown_topic", "no telemetry schema for this topic")
        if not isinstance(payload, (bytes, bytearray)):
            kind = type(payload).__name__
            raise EgressBlocked(suffix, "not_json", f"payload is {kind}, not bytes")
        if len(payload) > self.max_payload_bytes:
            raise EgressBlocked(suffix, "too_large",
                                f"{len(payload)} bytes, at most {self.max_payload_bytes}")
        try:
            document = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            kind = type(exc).__name__
            raise EgressBlocked(suffix, "not_json", f"not UTF-8 JSON ({kind})") from None
        for text in _strings(document):
            reason = self._string_reason(text)
            if reason is not None:
                raise EgressBlocked(suffix, reason, f"a string of {len(text)} characters")
        longest = max(_arrays(document, suffix.startswith(RECORD_TOPICS)), default=0)
        if longest > self.max_array_items:
            raise EgressBlocked(suffix, "array", f"an array of {longest} values, "
                                f"at most {self.max_array_items}")
        numbers = _numbers(document)
        if numbers > MAX_NUMBERS:
            raise EgressBlocked(suffix, "numbers", f"{numbers} numbers, at most {MAX_NUMBERS}")
        try:
            model.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise EgressBlocked(suffix, "schema", f"{where}: {first['msg']}") from None

    def _string_reason(self, text: str) -> str | None:
        """Why ``text`` may not leave, or None."""
        if len(text) > self.max_string_chars:
            return "long_string"
        if CONTROL.search(text):
            return "control_characters"
        if DATA_URI.search(text) or self._blob.search(text) or _dense_bits(text) >= self._blob_bits:
            return "encoded_blob"
        if NUMERIC_RUN.search(text):
            return "numeric_text"
        return None
