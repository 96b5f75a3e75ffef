"""Prometheus metrics of the fleet, in the text exposition format (version 0.0.4), written by hand.

Label cardinality is bounded on purpose (docs/fleet.md):
- ``device``: the first ``max_devices`` devices seen get their own label value;
  the rest are counted under ``device="_overflow"`` in counters and left out of
  per-device gauges (``edge_fleet_label_overflow_devices`` says how many).
- ``camera``, ``zone``, ``label`` (of the results, counts and object events): the first
  ``MAX_CAMERA_LABELS`` / ``MAX_ZONE_LABELS`` / ``MAX_OBJECT_LABELS`` values seen fleet-wide
  (agent.fleet.sinks) get their own; the rest are counted under ``_other`` in counters and left
  out of the zone gauges (``edge_fleet_label_overflow_values`` says how many per label).
- ``model``, ``version``: one series per device at a time; a new version replaces
  the old series instead of adding one.
- ``stage``, ``quantile``, ``signal``, ``topic``, ``severity``, ``state``, ``kind``:
  closed sets; anything else a device sends is folded into ``other``.
- never a frame, command or deployment id.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_DEVICES",
    "OTHER",
    "OTHER_VALUES",
    "OVERFLOW",
    "BoundedLabels",
    "DeviceLabels",
    "Family",
    "Registry",
    "closed",
    "escape",
]

DEFAULT_MAX_DEVICES = 1000
OVERFLOW = "_overflow"
OTHER = "other"
OTHER_VALUES = "_other"
"""Where the values of a bounded open label (camera, zone, object label) beyond its cap are counted."""


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def closed(value: str, allowed: Iterable[str]) -> str:
    """``value`` when it is one of ``allowed``, else ``other``: keeps a label's values a closed set."""
    return value if value in allowed else OTHER


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class BoundedLabels:
    """At most ``limit`` values of one label get their own series; later values are folded into ``rest``."""

    def __init__(self, limit: int, rest: str = OTHER_VALUES, what: str = "values") -> None:
        if limit < 1:
            raise ValueError(f"max {what} must be at least 1, got {limit}")
        self.limit = limit
        self.rest = rest
        self._named: set[str] = set()
        self._overflow: set[str] = set()

    def label(self, value: str) -> str:
        if value in self._named:
            return value
        if value not in self._overflow and len(self._named) < self.limit:
            self._named.add(value)
            return value
        self._overflow.add(value)
        return self.rest

    @property
    def overflowed(self) -> int:
        return len(self._overflow)


class DeviceLabels(BoundedLabels):
    """Device label values, at most ``max_devices`` of them; later devices go to ``_overflow``."""

    def __init__(self, max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        super().__init__(max_devices, OVERFLOW, "devices")

    @property
    def max_devices(self) -> int:
        return self.limit


@dataclass
class Family:
    """One metric: ``key`` labels identify a series, ``info`` labels (model, version) ride along."""

    name: str
    kind: str
    help: str
    key: tuple[str, ...] = ()
    info: tuple[str, ...] = ()
    samples: dict[tuple[str, ...], tuple[tuple[str, ...], float]] = field(default_factory=dict)

    def set(self, key: tuple[str, ...], value: float, info: tuple[str, ...] = ()) -> None:
        self.samples[key] = (info, value)

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        info, value = self.samples.get(key, ((), 0.0))
        self.samples[key] = (info, value + amount)

    def drop_prefix(self, prefix: tuple[str, ...]) -> None:
        """Forget every series whose key begins with ``prefix`` (a camera's counts being replaced)."""
        for key in [k for k in self.samples if k[:len(prefix)] == prefix]:
            del self.samples[key]

    def drop(self, first_label: str) -> None:
        """Forget every series whose first key label is ``first_label`` (a device that went away)."""
        for key in [k for k in self.samples if k and k[0] == first_label]:
            del self.samples[key]

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        names = self.key + self.info
        for key, (info, value) in sorted(self.samples.items()):
            values = key + (info if info else ("",) * len(self.info))
            labels = ",".join(f'{n}="{escape(v)}"' for n, v in zip(names, values, strict=True))
            lines.append(f"{self.name}{{{labels}}} {_number(value)}" if labels else f"{self.name} {_number(value)}")
        return lines


class Registry:
    """Families by name, rendered together; a lock guards them (the HTTP server reads from its thread)."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.lock = threading.Lock()

    def add(self, name: str, kind: str, help: str, key: tuple[str, ...] = (),
            info: tuple[str, ...] = ()) -> Family:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"metric {name}: kind must be counter or gauge, got {kind!r}")
        if name in self.families:
            raise ValueError(f"metric {name} is already registered")
        family = self.families[name] = Family(name, kind, help, key, info)
        return family

    def render(self) -> str:
        with self.lock:
            lines = [line for family in self.families.values() for line in family.render()]
        return "\n".join(lines) + "\n"
