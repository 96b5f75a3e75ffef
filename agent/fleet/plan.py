"""A staged rollout's plan: canary, waves, failure bound, health wait; and which device is in which wave.

Pure functions and frozen dataclasses, no I/O. Percentages are cumulative shares
of the group: ``--canary 5% --waves 25%,50%,100%`` deploys to 5 %, then up to
25 %, 50 % and all of the devices. A stage's device count is
``ceil(share * devices)``, at least one; stages that would add no device are
merged away. Devices are ordered by a hash of the rollout id and the device id,
so the canaries are a spread of the fleet, the same on every resume.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.fleet.errors import FleetError

__all__ = [
    "PlanError",
    "RolloutPlan",
    "assign_waves",
    "failure_share",
    "parse_duration",
    "parse_percent",
    "parse_percents",
]

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
PERCENT_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%?\s*")


class PlanError(FleetError, ValueError):
    """A rollout option is invalid; the message names it."""


def parse_percent(text: str, what: str = "percentage") -> float:
    """``"5%"`` or ``"5"`` -> 5.0; within [0, 100]."""
    match = PERCENT_PATTERN.fullmatch(text)
    if match is None:
        raise PlanError(f"{what} {text!r} is not a percentage like 5% or 12.5%")
    value = float(match.group(1))
    if value > 100:
        raise PlanError(f"{what} {text!r} is over 100%")
    return value


def parse_percents(text: str, what: str = "waves") -> tuple[float, ...]:
    """``"25%,50%,100%"`` -> (25.0, 50.0, 100.0)."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise PlanError(f"{what} {text!r} names no percentage")
    return tuple(parse_percent(part, what) for part in parts)


def parse_duration(text: str, what: str = "duration") -> float:
    """``"60s"``, ``"2m"``, ``"500ms"``, ``"1h"`` or a number of seconds -> seconds."""
    match = DURATION_PATTERN.fullmatch(text)
    if match is None:
        raise PlanError(f"{what} {text!r} is not a duration like 60s, 2m, 500ms or 1h")
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class RolloutPlan:
    canary_pct: float
    waves_pct: tuple[float, ...]
    abort_failures_pct: float
    """Abort when failed devices exceed this share of the devices tried so far."""
    wait_healthy_s: float

    def __post_init__(self) -> None:
        if not 0 < self.canary_pct <= 100:
            raise PlanError(f"canary {self.canary_pct}% must be above 0% and at most 100%")
        if not self.waves_pct:
            raise PlanError("waves must name at least one percentage")
        previous = self.canary_pct
        for share in self.waves_pct:
            if share <= previous:
                raise PlanError(f"waves are cumulative and must increase after the canary ({self.canary_pct}%): "
                                f"{share}% follows {previous}%")
            previous = share
        if self.waves_pct[-1] != 100:
            raise PlanError(f"the last wave must be 100%, got {self.waves_pct[-1]}%")
        if not 0 <= self.abort_failures_pct <= 100:
            raise PlanError(f"abort-failures {self.abort_failures_pct}% must be within 0-100%")
        if self.wait_healthy_s < 0:
            raise PlanError(f"wait-healthy {self.wait_healthy_s}s must not be negative")

    @property
    def stages_pct(self) -> tuple[float, ...]:
        """The canary followed by the waves: cumulative shares of the group."""
        return (self.canary_pct, *self.waves_pct)

    def aborts(self, failed: int, tried: int) -> bool:
        """True when ``failed`` of ``tried`` devices is more than the bound allows."""
        return tried > 0 and failure_share(failed, tried) * 100 > self.abort_failures_pct

    def to_json(self) -> dict[str, object]:
        return {"canary_pct": self.canary_pct, "waves_pct": list(self.waves_pct),
                "abort_failures_pct": self.abort_failures_pct, "wait_healthy_s": self.wait_healthy_s}


def failure_share(failed: int, tried: int) -> float:
    return failed / tried if tried else 0.0


def _order(rollout_id: str, devices: Iterable[str]) -> list[str]:
    def key(device: str) -> str:
        return hashlib.sha256(f"{rollout_id}\0{device}".encode()).hexdigest()

    return sorted(set(devices), key=key)


def assign_waves(rollout_id: str, devices: Sequence[str], plan: RolloutPlan) -> list[list[str]]:
    """The devices of each stage (canary first), each device in exactly one stage."""
    ordered = _order(rollout_id, devices)
    total = len(ordered)
    waves: list[list[str]] = []
    done = 0
    for share in plan.stages_pct:
        upto = min(total, max(1, math.ceil(share / 100 * total - 1e-9)))
        if upto > done:
            waves.append(ordered[done:upto])
            done = upto
    return waves
