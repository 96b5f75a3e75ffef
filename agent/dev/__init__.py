"""Developer tools: benchmarks, the soak run, the demo models, the configuration page."""

from __future__ import annotations

from agent.dev.base import DevError
from agent.dev.bench_cameras import CAMERA_COUNTS
from agent.dev.bench_shadow import SHADOW_ROUNDS, SHADOW_S
from agent.dev.config_doc import render_markdown
from agent.dev.rtsp_bench import measure_rtsp_recovery, recovery_summary, rtsp_server_unavailable

__all__ = [
    "CAMERA_COUNTS",
    "SHADOW_ROUNDS",
    "SHADOW_S",
    "DevError",
    "measure_rtsp_recovery",
    "recovery_summary",
    "render_markdown",
    "rtsp_server_unavailable",
]
