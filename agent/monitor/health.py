"""Process and device health read from /proc and /sys (Jetson figures where present)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JETSON_GPU_LOAD", "ProcessSampler", "read_gpu_load", "read_temperatures"]

THERMAL_ROOT = Path("/sys/class/thermal")
JETSON_GPU_LOAD = (Path("/sys/devices/gpu.0/load"), Path("/sys/devices/platform/gpu.0/load"))
"""Jetson GPU load in per mille (what tegrastats reports as GR3D_FREQ %)."""
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def read_temperatures(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """Degrees Celsius by thermal zone type (cpu-thermal, gpu-thermal, ... on Jetson)."""
    temps: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        temps[kind if kind not in temps else f"{kind}-{zone.name}"] = milli / 1000.0
    return temps


def read_gpu_load(paths: tuple[Path, ...] = JETSON_GPU_LOAD) -> float | None:
    """Jetson GPU load as a fraction 0..1, or None where the file is absent."""
    for path in paths:
        try:
            return int(path.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return None


def memory_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_SIZE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def disk_free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@dataclass
class ProcessSampler:
    """CPU use of this process between two samples, as a percentage of one core."""

    _last_cpu: float = 0.0
    _last_wall: float = 0.0

    def cpu_percent(self) -> float:
        times = os.times()
        cpu = times.user + times.system
        wall = time.monotonic()
        if self._last_wall == 0.0:
            self._last_cpu, self._last_wall = cpu, wall
            return 0.0
        span = wall - self._last_wall
        percent = 100.0 * (cpu - self._last_cpu) / span if span > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        return round(percent, 1)
