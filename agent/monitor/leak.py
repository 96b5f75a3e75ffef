"""Resource leaks: RSS, open fds, threads and device memory as robust trends, per hour and per swap.

A sample (``sample()``, on a timer) reads /proc/self (statm, fd, task) and,
when given, a device-memory reader (CUDA free/total through the TensorRT
runtime's CUDA layer) and the process's NVMAP figure on Jetson. ``on_swap()``
marks a model swap: the next sample is also that swap's sample, taken once the
old engine has had time to close. ``snapshot()`` fits a Theil-Sen slope per
hour over the recent samples and per swap over the recent swaps; a slope that
stays above its bound for ``consecutive`` evaluations raises the resource's
alarm, and it clears once the slope is back under the bound by the clear
margin. The egress guard's counts travel in the same payload.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.core import LeakSection
from agent.monitor.alarms import Judge, SignalEvent
from agent.monitor.egress import EgressGuard
from agent.monitor.stats import Thresholds, theil_sen
from agent.wire import SignalState

__all__ = ["NVMAP_CLIENTS", "RESOURCES", "DeviceReader", "LeakMonitor",
           "ResourceSample", "ResourceSampler", "parse_nvmap_clients", "read_nvmap"]

log = structlog.get_logger(__name__)

SIGNAL = "leak"
MB = 1024 * 1024
SECONDS_PER_HOUR = 3600.0
DIGITS = 6
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
NVMAP_CLIENTS = Path("/sys/kernel/debug/nvmap/iovmm/clients")
"""Jetson: per-client NVMAP (GPU-mapped) memory; debugfs, readable by root only."""
_SIZE = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": MB, "G": 1024 * MB}

DeviceReader = Callable[[], "tuple[int, int] | None"]
"""Free and total device memory in bytes, or None (e.g. agent.runtime.cuda.device_memory)."""


@dataclass(frozen=True, slots=True)
class ResourceSample:
    at: float
    """Seconds on the monitor's clock (monotonic by default)."""
    rss_bytes: int
    fds: int
    threads: int
    device_used_bytes: int | None = None
    nvmap_bytes: int | None = None


RESOURCES: dict[str, tuple[str, str, float]] = {
    "rss": ("rss_bytes", "MB", MB),
    "fds": ("fds", "count", 1.0),
    "threads": ("threads", "count", 1.0),
    "device_memory": ("device_used_bytes", "MB", MB),
    "nvmap": ("nvmap_bytes", "MB", MB),
}
"""Resource name -> (sample field, unit, bytes per unit)."""


def parse_nvmap_clients(text: str, pid: int) -> int | None:
    """Bytes mapped by ``pid`` in an nvmap ``clients`` table (CLIENT PROCESS PID SIZE)."""
    total, found = 0, False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[-2].isdigit() or int(fields[-2]) != pid:
            continue
        match = _SIZE.fullmatch(fields[-1])
        if match:
            total += int(match.group(1)) * _UNITS[match.group(2).upper()]
            found = True
    return total if found else None


def read_nvmap(path: Path = NVMAP_CLIENTS, pid: int | None = None) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return parse_nvmap_clients(text, os.getpid() if pid is None else pid)


class ResourceSampler:
    """Reads one ResourceSample of this process; ``clock`` and the readers are injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 device_reader: DeviceReader | None = None,
                 nvmap_path: Path | None = NVMAP_CLIENTS) -> None:
        self.clock = clock
        self.device_reader = device_reader
        self.nvmap_path = nvmap_path

    def __call__(self) -> ResourceSample:
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE_SIZE
        fds = len(os.listdir("/proc/self/fd"))
        threads = len(os.listdir("/proc/self/task"))
        device = None
        if self.device_reader is not None:
            reading = self.device_reader()
            device = None if reading is None else reading[1] - reading[0]
        nvmap = read_nvmap(self.nvmap_path) if self.nvmap_path is not None else None
        return ResourceSample(self.clock(), rss, fds, threads, device, nvmap)


def _bounds(s: LeakSection) -> dict[str, tuple[float, float]]:
    """Resource name -> (bound per hour, bound per swap), in the resource's unit."""
    return {
        "rss": (s.leak_rss_mb_per_hour, s.leak_rss_mb_per_swap),
        "fds": (s.leak_fds_per_hour, s.leak_fds_per_swap),
        "threads": (s.leak_threads_per_hour, s.leak_threads_per_swap),
        "device_memory": (s.leak_device_mb_per_hour, s.leak_device_mb_per_swap),
        "nvmap": (s.leak_nvmap_mb_per_hour, s.leak_nvmap_mb_per_swap),
    }


def _slope(xs: list[float], ys: list[float], minimum: int) -> float | None:
    if len(ys) < minimum or len(set(xs)) < 2:
        return None
    return round(theil_sen(xs, ys), DIGITS)


class LeakMonitor:
    """Samples this process's resources and judges their trends over time and over swaps."""

    def __init__(self, settings: LeakSection | None = None, *,
                 sampler: Callable[[], ResourceSample] | None = None,
                 egress: EgressGuard | None = None) -> None:
        self.settings = settings or LeakSection()
        self._bounds = _bounds(self.settings)
        self.sampler = sampler or ResourceSampler()
        self.egress = egress
        self._lock = threading.Lock()
        self._samples: deque[ResourceSample] = deque(maxlen=self.settings.leak_window)
        self._swap_samples: deque[tuple[int, ResourceSample]] = deque(
            maxlen=self.settings.leak_swap_window)
        self.swaps = 0
        self._swap_pending = False
        self._judges: dict[str, Judge] = {}
        self._events: list[SignalEvent] = []

    def sample(self) -> ResourceSample:
        """Take one sample (timer); the first sample after a swap is also that swap's sample."""
        sample = self.sampler()
        with self._lock:
            self._samples.append(sample)
            if self._swap_pending:
                self._swap_samples.append((self.swaps, sample))
                self._swap_pending = False
        return sample

    def on_swap(self) -> None:
        with self._lock:
            self.swaps += 1
            self._swap_pending = True

    def take_events(self) -> list[SignalEvent]:
        events, self._events = self._events, []
        return events

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            samples = list(self._samples)
            swaps = list(self._swap_samples)
        return {
            "samples": len(samples),
            "span_s": round(samples[-1].at - samples[0].at, 3) if samples else 0.0,
            "swaps": self.swaps,
            "resources": {name: self._resource(name, samples, swaps) for name in RESOURCES},
            "egress": None if self.egress is None else self.egress.counts(),
        }

    def _resource(self, name: str, samples: list[ResourceSample],
                  swaps: list[tuple[int, ResourceSample]]) -> dict[str, Any]:
        field, unit, scale = RESOURCES[name]
        s = self.settings
        bound_hour, bound_swap = self._bounds[name]
        timed = [(x.at / SECONDS_PER_HOUR, getattr(x, field) / scale) for x in samples
                 if getattr(x, field) is not None]
        swapped = [(float(n), getattr(x, field) / scale) for n, x in swaps
                   if getattr(x, field) is not None]
        entry: dict[str, Any] = {
            "unit": unit, "value": round(timed[-1][1], DIGITS) if timed else None,
            "slope_per_hour": _slope([t for t, _ in timed], [v for _, v in timed], s.leak_min_samples),
            "bound_per_hour": bound_hour,
            "slope_per_swap": _slope([n for n, _ in swapped], [v for _, v in swapped], s.leak_min_swaps),
            "bound_per_swap": bound_swap,
        }
        if not timed:
            entry["state"] = SignalState.UNAVAILABLE
            return entry
        if entry["slope_per_hour"] is None and entry["slope_per_swap"] is None:
            entry["state"] = SignalState.INSUFFICIENT_SAMPLES
            return entry
        judge = self._judges.get(name)
        if judge is None:
            judge = self._judges[name] = Judge(SIGNAL, name, {
                "slope_per_hour": Thresholds(bound_hour, None, s.leak_clear_margin, True, s.leak_consecutive),
                "slope_per_swap": Thresholds(bound_swap, None, s.leak_clear_margin, True, s.leak_consecutive),
            })
        event = judge.evaluate({"slope_per_hour": entry["slope_per_hour"],
                                "slope_per_swap": entry["slope_per_swap"]})
        if event is not None:
            self._events.append(event)
            log.warning("leak_state_changed", resource=name, state=event.state,
                        measure=event.measure, value=event.value, threshold=event.threshold)
        entry["state"] = judge.level.label
        return entry
