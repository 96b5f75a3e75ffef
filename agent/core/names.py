"""Model names and versions: they become path components and topic values, so they are strict."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["NAME_PATTERN", "ModelName", "ModelVersion", "check_name"]

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
