"""The monitor package.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.monitor.bias import BiasConfigError, BiasMonitor, SliceSpec
    from agent.monitor.drift import DriftMonitor
    from agent.monitor.egress import EgressBlocked, EgressGuard
    from agent.monitor.features import FailureCount, FrameSummary, SummaryObserver
    from agent.monitor.health import (
        ProcessSampler,
        disk_free_bytes,
        memory_available_bytes,
        read_gpu_load,
        read_temperatures,
        rss_bytes,
    )
    from agent.monitor.latency import CameraRecorders, LatencyRecorder
    from agent.monitor.leak import LeakMonitor, ResourceSampler
    from agent.monitor.reference import (
        Categories,
        Distribution,
        Reference,
        ReferenceBuilder,
        ReferenceDataError,
        output_metrics,
    )
    from agent.monitor.stats import PSI_EPSILON, bin_counts, input_stats, js_distance, psi
    from agent.monitor.telemetry import Telemetry

__all__ = [
    "PSI_EPSILON",
    "BiasConfigError",
    "BiasMonitor",
    "CameraRecorders",
    "Categories",
    "Distribution",
    "DriftMonitor",
    "EgressBlocked",
    "EgressGuard",
    "FailureCount",
    "FrameSummary",
    "LatencyRecorder",
    "LeakMonitor",
    "ProcessSampler",
    "Reference",
    "ReferenceBuilder",
    "ReferenceDataError",
    "ResourceSampler",
    "SliceSpec",
    "SummaryObserver",
    "Telemetry",
    "bin_counts",
    "disk_free_bytes",
    "input_stats",
    "js_distance",
    "memory_available_bytes",
    "output_metrics",
    "psi",
    "read_gpu_load",
    "read_temperatures",
    "rss_bytes",
]

_HOMES = {
    "BiasConfigError": "agent.monitor.bias",
    "BiasMonitor": "agent.monitor.bias",
    "CameraRecorders": "agent.monitor.latency",
    "Categories": "agent.monitor.reference",
    "Distribution": "agent.monitor.reference",
    "DriftMonitor": "agent.monitor.drift",
    "EgressBlocked": "agent.monitor.egress",
    "EgressGuard": "agent.monitor.egress",
    "FailureCount": "agent.monitor.features",
    "FrameSummary": "agent.monitor.features",
    "LatencyRecorder": "agent.monitor.latency",
    "LeakMonitor": "agent.monitor.leak",
    "PSI_EPSILON": "agent.monitor.stats",
    "ProcessSampler": "agent.monitor.health",
    "Reference": "agent.monitor.reference",
    "ReferenceBuilder": "agent.monitor.reference",
    "ReferenceDataError": "agent.monitor.reference",
    "ResourceSampler": "agent.monitor.leak",
    "SliceSpec": "agent.monitor.bias",
    "SummaryObserver": "agent.monitor.features",
    "Telemetry": "agent.monitor.telemetry",
    "bin_counts": "agent.monitor.stats",
    "disk_free_bytes": "agent.monitor.health",
    "input_stats": "agent.monitor.stats",
    "js_distance": "agent.monitor.stats",
    "memory_available_bytes": "agent.monitor.health",
    "output_metrics": "agent.monitor.reference",
    "psi": "agent.monitor.stats",
    "read_gpu_load": "agent.monitor.health",
    "read_temperatures": "agent.monitor.health",
    "rss_bytes": "agent.monitor.health",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
