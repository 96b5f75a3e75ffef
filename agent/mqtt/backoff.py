"""Capped exponential backoff with jitter: the delays between reconnect attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["DEFAULT_FACTOR", "DEFAULT_JITTER", "Backoff", "backoff_delay"]

DEFAULT_FACTOR = 2.0
DEFAULT_JITTER = 0.25
"""Each delay is shortened by up to this fraction, so a fleet does not reconnect in lockstep."""


def backoff_delay(
    attempt: int, min_s: float, max_s: float, factor: float, jitter: float, draw: float
) -> float:
    """The delay before retry ``attempt`` (0-based); ``draw`` in [0, 1) picks the jitter."""
    if attempt < 0 or not 0.0 <= draw < 1.0 or not 0.0 <= jitter < 1.0:
        raise ValueError("attempt must be >= 0, draw in [0, 1), jitter in [0, 1)")
    exponent = min(attempt, 64)
    ceiling = min(max_s, min_s * factor**exponent)
    return ceiling * (1.0 - jitter * draw)


@dataclass
class Backoff:
    """Hands out growing delays; ``reset()`` after a success starts again at ``min_s``."""

    min_s: float
    max_s: float
    factor: float = DEFAULT_FACTOR
    jitter: float = DEFAULT_JITTER
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got {self.min_s} and {self.max_s}")
        if self.factor < 1.0:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def next_delay(self) -> float:
        delay = backoff_delay(
            self.attempt, self.min_s, self.max_s, self.factor, self.jitter, self.rng.random()
        )
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
