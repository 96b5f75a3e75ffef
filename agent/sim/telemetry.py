"""What a simulated agent's telemetry says: latency, health, drift, bias and leak, made up.

Pure builders: each takes the envelope (agent.sim.device's ``_envelope``: device id, time,
sequence number) and the device's figures, and returns the payload the agent would publish
(latency and health as models of agent.wire; drift, bias and leak as JSON objects of the
agent's shape, with a per-metric ``state`` in ok, warn, alarm). The numbers come from the
device's id (its latency range, whether its drift is in alarm) and its seeded random stream;
nothing is measured. The device (``SimDevice.publish_telemetry``) publishes them, and sends
the ``alarm_raised`` event (``alarm_raised``) once when its drift is in alarm.
"""

from __future__ import annotations

import random
from typing import Any

from agent.wire import (
    BrokerHealth,
    CameraHealth,
    CameraLatency,
    CameraState,
    CameraStatus,
    HealthPayload,
    LatencyPayload,
    ModelBrief,
    SessionState,
    Severity,
    SignalState,
    StageLatency,
)

__all__ = [
    "BASE_FPS",
    "BASE_LATENCY_MS",
    "SIM_CAMERA",
    "alarm_raised",
    "bias",
    "drift",
    "health_payload",
    "latency_payload",
    "leak",
    "stages",
]

SIM_CAMERA = "camera0"
"""The one camera a simulated device reports in its health."""
BASE_FPS = 15.0
BASE_LATENCY_MS = (18.0, 60.0)
"""End-to-end p50 of a simulated device lies in this range (by hash of its id)."""
STAGE_SHARES = {"capture_wait": 0.1, "preprocess": 0.15, "infer": 0.6, "postprocess": 0.15}
WINDOW_FRAMES = 300
DRIFT_ALARM_PSI = 0.42
DRIFT_ALARM_BOUND = 0.25
DRIFT_OK_PSI = 0.03
RSS_BYTES = 180_000_000
MEMORY_AVAILABLE_BYTES = 4_000_000_000
DISK_FREE_BYTES = 20_000_000_000
DROPPED_FRAMES_EVERY = 200
"""One frame in this many is reported overwritten."""


def alarm_raised() -> tuple[str, Severity, str, dict[str, Any]]:
    """The event a device whose drift is in alarm sends once: kind, severity, message and data."""
    return ("alarm_raised", "alarm",
            f"drift brightness: ok -> alarm (psi {DRIFT_ALARM_PSI}, bound {DRIFT_ALARM_BOUND})",
            {"signal": "drift", "metric": "brightness", "measure": "psi", "previous": SignalState.OK,
             "state": SignalState.ALARM, "value": DRIFT_ALARM_PSI, "threshold": DRIFT_ALARM_BOUND})


def latency_payload(envelope: dict[str, Any], fps: float, frames: int,
                    stages: dict[str, StageLatency]) -> LatencyPayload:
    """The latency telemetry at ``fps``, ``frames`` processed since start, with ``stages``."""
    dropped = frames // DROPPED_FRAMES_EVERY
    return LatencyPayload(
        **envelope, window_frames=WINDOW_FRAMES, fps=round(fps, 2),
        frames_processed=frames, frames_dropped=dropped, stages=stages,
        cameras=[CameraLatency(name=SIM_CAMERA, window_frames=WINDOW_FRAMES, fps=round(fps, 2),
                               frames_processed=0, frames_dropped=dropped, stages=stages)])


def health_payload(envelope: dict[str, Any], uptime: float, fps: float, frames: int, model: ModelBrief,
                   rng: random.Random) -> HealthPayload:
    """The health telemetry of a device up ``uptime`` seconds, serving ``model``."""
    return HealthPayload(
        **envelope, uptime_s=round(uptime, 1),
        camera=CameraHealth(state=CameraState.OPEN, reopens=0, last_error=None, fps=fps),
        broker=BrokerHealth(state=SessionState.CONNECTED, reconnects=0),
        model=model,
        cpu_percent=round(40 + 20 * rng.random(), 1), memory_rss_bytes=RSS_BYTES,
        memory_available_bytes=MEMORY_AVAILABLE_BYTES, temperatures_c={}, gpu_load=None,
        disk_free_bytes=DISK_FREE_BYTES, outbox_depth=0, frames_processed=frames,
        cameras=[CameraStatus(name=SIM_CAMERA, state=CameraState.OPEN, reopens=0, last_error=None, fps=fps,
                              inferred_fps=fps, frames_captured=frames, frames_overwritten=0,
                              frames_inferred=frames, errors=0)])


def stages(latency_ms: float, rng: random.Random) -> dict[str, StageLatency]:
    """Each stage's latency around the device's end-to-end p50 ``latency_ms``."""
    p50 = latency_ms * (1.0 + 0.1 * rng.random())
    by_stage = {"end_to_end": _stage(p50)}
    by_stage.update({name: _stage(p50 * share) for name, share in STAGE_SHARES.items()})
    return by_stage


def drift(name: str, version: str, alarmed: bool, rng: random.Random) -> dict[str, Any]:
    """The drift document of model ``name`` ``version``: brightness in alarm on a device that is."""
    psi = DRIFT_ALARM_PSI if alarmed else DRIFT_OK_PSI * (1 + rng.random())
    state = SignalState.ALARM if alarmed else SignalState.OK
    return {"version": version,
            "reference": {"model": name, "version": version, "samples": 500},
            "window": WINDOW_FRAMES, "samples": WINDOW_FRAMES,
            "metrics": {"brightness": {"state": state, "samples": WINDOW_FRAMES, "psi": round(psi, 4),
                                       "js": round(psi / 3, 4), "mean": 121.0, "reference_mean": 118.5},
                        "confidence": {"state": SignalState.OK, "samples": WINDOW_FRAMES, "psi": 0.02, "js": 0.01,
                                       "mean": 0.81, "reference_mean": 0.8}}}


def bias() -> dict[str, Any]:
    """The bias document: one slicing, within its bounds."""
    return {"window": WINDOW_FRAMES, "samples": WINDOW_FRAMES,
            "slicings": {"brightness_band": {"state": SignalState.OK,
                                             "selection_rate": {"max_difference": 0.04, "min_ratio": 0.93}}}}


def leak() -> dict[str, Any]:
    """The leak document: resident memory, flat."""
    return {"samples": 60, "resources": {"rss": {"unit": "MB", "value": RSS_BYTES / 1e6,
                                                 "state": SignalState.OK,
                                                 "slope_per_hour": 0.1, "bound_per_hour": 50.0}}}


def _stage(p50: float) -> StageLatency:
    return StageLatency(p50_ms=round(p50, 3), p95_ms=round(p50 * 1.4, 3), p99_ms=round(p50 * 1.8, 3),
                        max_ms=round(p50 * 2.5, 3), count=WINDOW_FRAMES)
