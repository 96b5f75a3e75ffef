"""The monitor package."""

from __future__ import annotations

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
