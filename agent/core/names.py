"""Names that become path components and topic levels: model names and versions, device ids, segments.

Strict on purpose: a name is checked where it enters (the config, a manifest, a command), and an
invalid one never exists. agent.wire.topics builds topics from these checks.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

from pydantic import AfterValidator

from agent.core.errors import AgentError

__all__ = [
    "CONSUMERS_SEGMENT",
    "FORBIDDEN_CHARACTERS",
    "GROUP_SEGMENT",
    "MAX_SEGMENT_LENGTH",
    "NAME_PATTERN",
    "RESERVED_SEGMENTS",
    "ModelName",
    "ModelVersion",
    "TopicError",
    "check_device_id",
    "check_name",
    "check_segment",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Matched with ``fullmatch``: ``match`` with ``$`` would accept a trailing newline."""


def check_name(value: str, what: str = "name") -> str:
    """Names and versions become path components: no separators, no '..', no surprises."""
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "start with a letter or digit, and contain no '..' or path separator"
        )
    return value


ModelName = Annotated[str, AfterValidator(partial(check_name, what="name"))]
"""A model name field, checked by ``check_name``."""
ModelVersion = Annotated[str, AfterValidator(partial(check_name, what="version"))]
"""A model version field, checked by ``check_name``."""


GROUP_SEGMENT = "group"
CONSUMERS_SEGMENT = "_consumers"
"""``<prefix>/_consumers/<share group>/<instance>``: the digests of shared fleet consumers."""
RESERVED_SEGMENTS = frozenset({GROUP_SEGMENT, CONSUMERS_SEGMENT})
"""Second levels of the tree that are not a device: never a device id (nor a group name, so
that one word means one thing). deploy/mosquitto/devices.acl denies them to any certificate."""
FORBIDDEN_CHARACTERS = "/+#\0"
MAX_SEGMENT_LENGTH = 128


class TopicError(AgentError, ValueError):
    """A prefix, device id, group, kind or command name cannot be used in a topic."""


def check_segment(value: str, what: str) -> str:
    """One topic level: not blank, at most 128 characters, no '/', '+', '#', NUL or other
    control character, and text that UTF-8 can encode (no lone surrogate)."""
    if not value.strip() or len(value) > MAX_SEGMENT_LENGTH:
        raise TopicError(f"{what} {value!r} must be 1-{MAX_SEGMENT_LENGTH} non-blank characters")
    if any(c in value for c in FORBIDDEN_CHARACTERS):
        raise TopicError(f"{what} {value!r} must not contain '/', '+', '#' or NUL")
    if not value.isprintable():  # also false for a lone surrogate (category Cs)
        raise TopicError(f"{what} {value!r} must not contain control characters")
    return value


def check_device_id(value: str, what: str = "device id") -> str:
    """A device id (or group name): one topic level and none of RESERVED_SEGMENTS."""
    check_segment(value, what)
    if value in RESERVED_SEGMENTS:
        reserved = ", ".join(sorted(RESERVED_SEGMENTS))
        raise TopicError(f"{what} {value!r} is a reserved word of the topic tree ({reserved})")
    return value
