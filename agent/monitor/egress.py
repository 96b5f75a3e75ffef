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
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from .settings import MonitorSection

__all__ = ["REASONS", "EgressBlocked", "EgressGuard"]

log = structlog.get_logger(__name__)

REASONS = ("unknown_topic", "too_large", "not_json", "schema", "long_string", "encoded_blob",
           "control_characters", "array")
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,", re.IGNORECASE)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class EgressBlocked(Exception):
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


def _arrays(value: Any) -> Iterator[int]:
    """The number of leaves of every outermost list (an image as nested lists is one array)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)
    elif isinstance(value, list):
        yield _leaves(value)


def _leaves(value: Any) -> int:
    if isinstance(value, list):
        return sum(_leaves(item) for item in value)
    if isinstance(value, dict):
        return sum(_leaves(item) for item in value.values())
    return 1


class EgressGuard:
    def __init__(
        self,
        models: Mapping[str, type[BaseModel]],
        *,
        max_payload_bytes: int = 65_536,
        max_string_chars: int = 2048,
        blob_min_chars: int = 128,
        max_array_items: int = 256,
    ) -> None:
        self.models = dict(models)
        self.max_payload_bytes = max_payload_bytes
        self.max_string_chars = max_string_chars
        self.max_array_items = max_array_items
        self._blob = re.compile(rf"[A-Za-z0-9+/_-]{{{blob_min_chars},}}")
        self._lock = threading.Lock()
        self.checked = 0
        self.blocked: dict[str, int] = dict.fromkeys(REASONS, 0)

    @classmethod
    def from_settings(cls, models: Mapping[str, type[BaseModel]],
                      section: MonitorSection) -> EgressGuard:
        return cls(models, max_payload_bytes=section.egress_max_payload_bytes,
                   max_string_chars=section.egress_max_string_chars,
                   blob_min_chars=section.egress_blob_min_chars,
                   max_array_items=section.egress_max_array_items)

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

    def allows(self, suffix: str, payload: bytes) -> bool:
        try:
            self.check(suffix, payload)
        except EgressBlocked:
            return False
        return True

    def counts(self) -> dict[str, Any]:
        with self._lock:
            blocked = {k: v for k, v in self.blocked.items() if v}
            return {"checked": self.checked, "blocked": sum(blocked.values()), "by_reason": blocked}

    def _inspect(self, suffix: str, payload: bytes) -> None:
        model = self.models.get(suffix)
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
            self._inspect_string(suffix, text)
        longest = max(_arrays(document), default=0)
        if longest > self.max_array_items:
            raise EgressBlocked(suffix, "array", f"an array of {longest} values, "
                                f"at most {self.max_array_items}")
        try:
            model.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise EgressBlocked(suffix, "schema", f"{where}: {first['msg']}") from None

    def _inspect_string(self, suffix: str, text: str) -> None:
        if len(text) > self.max_string_chars:
            raise EgressBlocked(suffix, "long_string", f"a string of {len(text)} characters, "
                                f"at most {self.max_string_chars}")
        if CONTROL.search(text):
            raise EgressBlocked(suffix, "control_characters", "a string holds control characters")
        if DATA_URI.search(text) or self._blob.search(text):
            raise EgressBlocked(suffix, "encoded_blob", "a string looks like base64-encoded data")
