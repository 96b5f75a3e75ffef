"""Alarm events: a signal's metric crossing into or out of ``warn``/``alarm``, once per crossing.

A ``Judge`` watches one metric through one or more measures (drift: PSI and JS
distance; bias: a ratio; leak: a slope), each with its own ``Hysteresis``; the
metric's state is the worst of its measures, and a change of that state is one
``SignalEvent`` naming the signal, the metric, the measure that moved it, the
value and the bound it crossed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.monitor.stats import Hysteresis, Level, Thresholds, Transition
from agent.wire import Severity, SignalState

__all__ = ["Judge", "SignalEvent"]

SEVERITY: dict[Level, Severity] = {Level.OK: "info", Level.WARN: "warning", Level.ALARM: "alarm"}


@dataclass(frozen=True)
class SignalEvent:
    signal: str
    """``drift``, ``bias`` or ``leak``."""
    metric: str
    """What was measured: ``brightness``, ``brightness_band.selection_rate``, ``rss``, ..."""
    measure: str
    """How: ``psi``, ``js``, ``ratio``, ``slope_per_hour``, ..."""
    previous: SignalState
    state: SignalState
    value: float | None
    threshold: float | None
    """The bound crossed (an enter bound when raised, a clear bound when cleared)."""
    at: float = field(default_factory=time.time)

    @property
    def raised(self) -> bool:
        return Level[self.state.upper()] > Level[self.previous.upper()]

    @property
    def kind(self) -> str:
        return "alarm_raised" if self.raised else "alarm_cleared"

    @property
    def severity(self) -> Severity:
        return SEVERITY[Level[self.state.upper()]] if self.raised else "info"

    @property
    def message(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        bound = "n/a" if self.threshold is None else f"{self.threshold:.4g}"
        return (f"{self.signal} {self.metric}: {self.previous} -> {self.state} "
                f"({self.measure} {value}, bound {bound})")

    def data(self) -> dict[str, Any]:
        return {"signal": self.signal, "metric": self.metric, "measure": self.measure,
                "previous": self.previous, "state": self.state, "value": self.value,
                "threshold": self.threshold}

    def as_event(self) -> tuple[str, Severity, str, dict[str, Any]]:
        """``(kind, severity, message, data)`` as the events topic takes them."""
        return self.kind, self.severity, self.message, self.data()


class Judge:
    """The state of one metric: the worst of its measures, each through its own hysteresis."""

    def __init__(self, signal: str, metric: str, thresholds: Mapping[str, Thresholds]) -> None:
        if not thresholds:
            raise ValueError(f"{signal} {metric}: a judge needs at least one measure")
        self.signal = signal
        self.metric = metric
        self._measures = {name: Hysteresis(t) for name, t in thresholds.items()}
        self.level = Level.OK

    def evaluate(self, values: Mapping[str, float | None]) -> SignalEvent | None:
        """Feed this evaluation's values (None: not measurable now); an event on a change."""
        moved: dict[str, Transition] = {}
        for name, hysteresis in self._measures.items():
            value = values.get(name)
            if value is None:
                continue
            transition = hysteresis.update(value)
            if transition is not None:
                moved[name] = transition
        level = max(h.level for h in self._measures.values())
        if level == self.level:
            return None
        previous, self.level = self.level, level
        raised = level > previous
        name, cause = next((n, t) for n, t in moved.items()
                           if t.raised == raised and (not raised or t.current == level))
        return SignalEvent(self.signal, self.metric, name, previous.label, level.label,
                           cause.value, cause.threshold)

    def reset(self) -> SignalEvent | None:
        """Back to ``ok`` (a new model or reference); an event when that clears a raised state."""
        previous = self.level
        for hysteresis in self._measures.values():
            hysteresis.reset()
        self.level = Level.OK
        if previous is Level.OK:
            return None
        return SignalEvent(self.signal, self.metric, "reset", previous.label, Level.OK.label,
                           None, None)
