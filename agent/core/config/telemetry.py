"""``[telemetry]`` and ``[watchdog]``: how often health and latency are published, when a stall stops the pings."""

from __future__ import annotations

from pydantic import Field

from agent.core.config.base import Section

__all__ = ["TelemetrySection", "WatchdogSection"]


class TelemetrySection(Section):
    health_period_s: float = Field(default=10.0, gt=0)
    """Seconds between ``telemetry/health`` messages."""
    latency_period_s: float = Field(default=5.0, gt=0)
    """Seconds between ``telemetry/latency`` messages."""
    latency_window: int = Field(default=600, ge=10, le=100_000)
    """Frames kept for the latency percentiles."""


class WatchdogSection(Section):
    stall_s: float = Field(default=10.0, gt=0)
    """No processed frame for this long stops the systemd watchdog pings."""
