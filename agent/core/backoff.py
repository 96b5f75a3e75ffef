"""Capped exponential backoff with jitter, for anything that reconnects.

Pure and clock-free: ``next_delay()`` says how long to wait before the next
attempt, the caller does the waiting. Jitter spreads the reconnects of a fleet
that lost the same broker or camera server at the same moment.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["DEFAULT_FACTOR", "DEFAULT_JITTER", "Backoff"]

DEFAULT_FACTOR = 2.0
"""Each failed attempt multiplies the base delay by this much."""
DEFAULT_JITTER = 0.1
"""Up to this fraction of the base delay is added at random."""


class Backoff:
    """Delays ``min_s, min_s*factor, ...`` capped at ``max_s``, each shortened by up to ``jitter``.

    ``rng`` returns a number in ``[0, 1)`` and picks the share of the jitter
    (``random.random`` by default; a constant in tests). A delay lies in
    ``[base * (1 - jitter), base]`` where ``base`` is the capped exponential, so
    no wait ever exceeds ``max_s`` and a fleet does not retry in lockstep.
    """

    def __init__(
        self,
        min_s: float,
        max_s: float,
        *,
        factor: float = DEFAULT_FACTOR,
        jitter: float = DEFAULT_JITTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not min_s > 0:
            raise ValueError(f"min_s must be > 0, got {min_s!r}")
        if not max_s >= min_s:
            raise ValueError(f"max_s must be >= min_s ({min_s!r}), got {max_s!r}")
        if not factor >= 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be within [0, 1), got {jitter!r}")
        self.min_s = min_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self._base = min_s
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """Delays handed out since the last ``reset()``."""
        return self._attempts

    def next_delay(self) -> float:
        """The wait before the next attempt; the one after it will be longer, up to the cap."""
        share = self._rng()
        if not 0 <= share <= 1:
            raise ValueError(f"rng must return a number within [0, 1], got {share!r}")
        delay = self._base * (1 - self.jitter * share)
        self._base = min(self._base * self.factor, self.max_s)
        self._attempts += 1
        return delay

    def reset(self) -> None:
        """Start again at ``min_s``: the connection worked."""
        self._base = self.min_s
        self._attempts = 0
