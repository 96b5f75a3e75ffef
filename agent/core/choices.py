"""A plain string checked against a fixed set of choices, typed as the choice it is.

A ``Literal`` type names the choices once; ``typing.get_args`` turns it into the tuple a
check runs over. ``one_of`` hands back the member itself, so a value read from a flag, a
file or the config becomes the ``Literal`` without a cast, and a caller that gets ``None``
raises its own package's error naming the choices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["one_of"]

T = TypeVar("T")


def one_of(value: object, choices: Iterable[T]) -> T | None:
    """The member of ``choices`` equal to ``value`` (typed as ``choices`` are), or None."""
    return next((choice for choice in choices if choice == value), None)
