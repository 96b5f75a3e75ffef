"""What every wire model shares: the strict model base, the size limits, the errors, text helpers.

All payloads are JSON objects validated by pydantic models on ``WireModel``
(``extra="forbid"``, strict types, no NaN/Infinity). docs/mqtt.md describes the
same contract for the people on the other side.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.core import AgentError

__all__ = [
    "ERROR_CODE_PATTERN",
    "MAX_ID_LENGTH",
    "MAX_TEXT_LENGTH",
    "MAX_URL_LENGTH",
    "SCHEMA_VERSION",
    "SHA256_PATTERN",
    "PayloadError",
    "WireModel",
    "clip_text",
    "describe",
    "is_text",
]

SCHEMA_VERSION = 1
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 1024
MAX_URL_LENGTH = 2048
ERROR_CODE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class PayloadError(AgentError, ValueError):
    """A payload is not valid JSON or does not match its model; the message names the field.

    Also a ValueError, as it was before the error root: callers that catch ValueError still do."""


class WireModel(BaseModel):
    """The base of the wire's models: unknown fields refused, strict types, frozen, finite numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def describe(error: ValidationError) -> str:
    """A pydantic error as one line that names each field: ``field 'a.b': is required; ...``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"field '{where}': {message}" if where else message)
    return "; ".join(parts)


def is_text(value: str) -> bool:
    """Encodable as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates, which are not)
    and free of control characters, which the agent's egress guard would not let out again."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()


def clip_text(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """``text`` made fit for a free-text field: at most ``limit`` characters, valid UTF-8.

    Error messages name what was wrong, and what was wrong may be huge (a payload with
    thousands of unknown fields) or not text at all; the message must still go out.
    """
    if not is_text(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        # Newlines and other control characters become spaces: text fields are one line.
        text = "".join(c if c.isprintable() else " " for c in text)
    if len(text) <= limit:
        return text
    marker = f" ... ({len(text) - limit} more characters)"
    return text[: limit - len(marker)] + marker
