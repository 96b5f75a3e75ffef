"""How often a camera's results go out: every frame, at most N a second, or on a change of tracks."""

from __future__ import annotations

from collections.abc import Set

from agent.core import RateSettings

__all__ = ["RATE_SLACK_S", "RateLimiter"]

RATE_SLACK_S = 1e-6
"""A frame due within this of its slot is due: frame times carry float rounding (18/30 - 12/30 < 0.2)."""


class RateLimiter:
    """One camera's gate for its results; ``admit(now, track_ids)`` once per frame.

    ``now`` is a monotonic clock reading (seconds) of the caller's; the gate keeps no
    clock of its own. ``max_rate`` admits the first frame at or after each slot of a grid
    ``1 / max_per_s`` apart (so a 7 fps camera limited to 5 still gives 5 a second), and
    starts the grid again after a stall rather than bursting to catch up; ``on_change``
    admits a frame when the set of track ids differs from the one last admitted. The
    first frame always goes out.
    """

    def __init__(self, settings: RateSettings) -> None:
        self.settings = settings
        self._period = 1.0 / settings.max_per_s
        self._due: float | None = None
        self._last_ids: frozenset[int] | None = None
        self.admitted = 0
        self.held = 0
        """Frames kept back by the rate: what the results stream skipped by design, not a loss."""

    def admit(self, now: float, track_ids: Set[int] = frozenset()) -> bool:
        mode = self.settings.mode
        if mode == "every_frame":
            go = True
        elif mode == "max_rate":
            go = self._due is None or now >= self._due - RATE_SLACK_S
        else:
            go = self._last_ids is None or frozenset(track_ids) != self._last_ids
        if go:
            due = self._due
            self._due = now + self._period if due is None or now - due >= self._period else due + self._period
            self._last_ids = frozenset(track_ids)
            self.admitted += 1
        else:
            self.held += 1
        return go
