"""``edge-agent fleet status``: what every device says, collected for a short window, as a table.

The retained ``status``, ``model`` and ``deployment`` topics arrive at once;
telemetry (fps, latency, drift, bias, leak states) and events arrive as the
devices send them, so the window should cover one telemetry period.
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from typing import Any

from agent.fleet.control import ControlClient
from agent.fleet.link import FleetLink
from agent.fleet.view import SIGNALS, DeviceView, FleetView
from agent.wire import DeviceState, HealthPayload, SignalState

__all__ = ["STATUS_FILTERS", "CamerasView", "cameras_cell", "collect", "device_rows", "render_table",
           "terminal_safe"]

STATUS_FILTERS = ("status", "model", "deployment", "events", "telemetry/#")
COLUMNS = ("DEVICE", "STATUS", "MODEL", "VERSION", "CAMERAS", "FPS", "P95_MS", "DRIFT", "BIAS", "LEAK", "AGREEMENT",
           "LAST_SEEN")
NONE = "-"
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Unicode categories stripped from device-supplied text before it reaches a terminal: control
characters (ESC starts every terminal escape sequence), format characters (bidi overrides reorder
what the table shows), surrogates, private use, unassigned, line and paragraph separators."""


class CamerasView(FleetView):
    """The fleet view plus each device's cameras, from its latest ``telemetry/health``."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.cameras: dict[str, list[dict[str, Any]]] = {}

    def _on_telemetry_health(self, view: DeviceView, data: HealthPayload | None) -> None:
        super()._on_telemetry_health(view, data)
        if data is not None and data.cameras:
            self.cameras[view.device_id] = [{"name": c.name, "state": c.state, "fps": c.inferred_fps}
                                            for c in data.cameras]


def cameras_cell(cameras: list[dict[str, Any]] | None) -> str:
    """``open/configured`` (``2/3``); ``-`` for a device that reported no camera list."""
    if not cameras:
        return NONE
    return f"{sum(c['state'] == 'open' for c in cameras)}/{len(cameras)}"


async def collect(control: ControlClient, window_s: float) -> FleetView:
    """Subscribe, read the retained state, then listen for ``window_s`` seconds."""
    link = FleetLink(control, STATUS_FILTERS)
    link.view = CamerasView(control.prefix)
    async with link:
        await asyncio.sleep(window_s)
        link.check()
        return link.view


def terminal_safe(value: object) -> str:
    """``value`` as text with every character of ``UNPRINTABLE`` categories removed."""
    return "".join(c for c in str(value) if unicodedata.category(c) not in UNPRINTABLE)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _number(value: float | None, digits: int) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def selected(view: FleetView, group: str | None, alarm: bool) -> list[DeviceView]:
    return [d for d in view.in_group(group) if not alarm or d.alarmed or d.alarms_seen]


def device_rows(view: FleetView, group: str | None = None, alarm: bool = False,
                now: float | None = None) -> list[dict[str, Any]]:
    """One dict per device (the table's content, and ``--json``'s)."""
    now = time.time() if now is None else now
    cameras = view.cameras if isinstance(view, CamerasView) else {}
    return [{
        "device": d.device_id, "status": d.status or "unknown", "groups": list(d.groups), "model": d.model,
        "version": d.version, "cameras": cameras.get(d.device_id), "fps": d.fps, "latency_p95_ms": d.latency_p95_ms,
        **{signal: d.signals.get(signal) for signal in SIGNALS},
        "alarm_events": d.alarms_seen, "shadow_agreement": d.shadow_agreement,
        "last_seen_s": None if d.last_seen is None else round(max(now - d.last_seen, 0.0), 1),
    } for d in selected(view, group, alarm)]


def render_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)]
    for row in rows:
        cells.append([row["device"], row["status"], row["model"] or NONE, row["version"] or NONE,
                      cameras_cell(row.get("cameras")), _number(row["fps"], 1), _number(row["latency_p95_ms"], 1),
                      *(row[s] or NONE for s in SIGNALS), _number(row.get("shadow_agreement"), 3),
                      _age(row["last_seen_s"])])
    cells = [[terminal_safe(value) for value in line] for line in cells]
    widths = [max(len(str(line[i])) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(value).ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
             for line in cells]
    online = sum(row["status"] == DeviceState.ONLINE for row in rows)
    alarmed = sum(any(row[s] == SignalState.ALARM for s in SIGNALS) or row["alarm_events"] > 0 for row in rows)
    lines.append(f"{len(rows)} devices, {online} online, {alarmed} with alarms")
    return "\n".join(lines)
