"""Developer tools: benchmarks, the soak run, the demo models, the configuration page.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
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

_HOMES = {
    "CAMERA_COUNTS": "agent.dev.bench_cameras",
    "DevError": "agent.dev.base",
    "SHADOW_ROUNDS": "agent.dev.bench_shadow",
    "SHADOW_S": "agent.dev.bench_shadow",
    "measure_rtsp_recovery": "agent.dev.rtsp_bench",
    "recovery_summary": "agent.dev.rtsp_bench",
    "render_markdown": "agent.dev.config_doc",
    "rtsp_server_unavailable": "agent.dev.rtsp_bench",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
