"""The model of ``edge-agent top``: one device's messages in, the rows of its live view out.

Pure: ``TopModel.apply(topic, payload)`` takes what the device publishes under
``<prefix>/<id>/`` (the retained ``status``, ``model`` and ``deployment``, the
``events`` and the ``telemetry/<kind>``), ``rows(now)`` returns plain rows for
the drawing (agent.cli.top) or a test to read. No terminal, no clock, no broker.

Topics are handled by a table from suffix to handler (``HANDLERS``), and the
rows hold lists keyed by name, so what later issues publish slots in: each
camera of a ``cameras`` topic becomes a ``CameraRow`` (today the one source of
the health telemetry), and ``counts/<cam>`` fills ``counts`` with ``CountRow``s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.fleet.view import SIGNALS, STATE_RANK, decode, largest, split_topic
from agent.wire import (
    DeploymentPayload,
    DeploymentState,
    DeviceState,
    EventPayload,
    HealthPayload,
    LatencyPayload,
    ModelPayload,
    PayloadError,
    StageLatency,
    StatusPayload,
)

__all__ = [
    "FINAL_DEPLOYMENT_STATES",
    "HEALTH_CAMERA",
    "MAX_EVENTS",
    "CameraRow",
    "CountRow",
    "DeploymentRow",
    "EventRow",
    "LatencyRow",
    "ModelRow",
    "SignalRow",
    "TopModel",
    "TopRows",
]

MAX_EVENTS = 8
"""The newest events the view keeps: what fits under the tables on a 40-line terminal."""
HEALTH_CAMERA = "source"
"""The name shown for the health telemetry's one camera, which carries none."""
FINAL_DEPLOYMENT_STATES = DeploymentState.FINAL
"""A deployment in one of these is over; any other state is shown as in progress."""
END_TO_END = "end_to_end"
NONE = "-"


@dataclass(frozen=True)
class CameraRow:
    name: str
    state: str
    fps: float
    """Frames a second the camera delivers (capture rate)."""
    reopens: int
    last_error: str | None


@dataclass(frozen=True)
class ModelRow:
    name: str
    version: str
    runtime: str
    since: float | None
    previous: str | None
    """``name version`` of the model it replaced."""


@dataclass(frozen=True)
class LatencyRow:
    stage: str
    stats: StageLatency
    """Percentiles over the agent's latency window, milliseconds."""


@dataclass(frozen=True)
class DeploymentRow:
    deployment_id: str
    name: str
    version: str
    state: str
    step: str
    progress: float
    error: str | None
    updated: float

    @property
    def in_progress(self) -> bool:
        return self.state not in FINAL_DEPLOYMENT_STATES


@dataclass(frozen=True)
class SignalRow:
    kind: str
    state: str
    detail: str


@dataclass(frozen=True)
class EventRow:
    ts: float
    severity: str
    kind: str
    message: str


@dataclass(frozen=True)
class CountRow:
    camera: str
    label: str
    count: int


@dataclass(frozen=True)
class TopRows:
    """Everything the live view shows, in the order it shows it."""

    device_id: str
    status: str
    agent_version: str | None
    uptime_s: float | None
    fps: float | None
    """Frames a second inferred."""
    frames_processed: int | None
    frames_dropped: int | None
    cameras: list[CameraRow]
    model: ModelRow | None
    latency: list[LatencyRow]
    deployment: DeploymentRow | None
    signals: list[SignalRow]
    events: list[EventRow]
    counts: list[CountRow] = field(default_factory=list)
    rejected: int = 0
    """Messages that did not parse as the contract's payloads."""


def _strings(document: Any, key: str) -> list[str]:
    found: list[str] = []
    if isinstance(document, dict):
        for name, value in document.items():
            if name == key and isinstance(value, str):
                found.append(value)
            found += _strings(value, key)
    elif isinstance(document, list):
        for item in document:
            found += _strings(item, key)
    return found


def _signal_state(document: dict[str, Any]) -> str:
    """The worst judged state (ok < warn < alarm), else why nothing is judged yet (``no_reference``)."""
    states = _strings(document, "state")
    judged = [state for state in states if state in STATE_RANK]
    if judged:
        return max(judged, key=STATE_RANK.__getitem__)
    return states[0] if states else NONE


def _leak_detail(document: dict[str, Any]) -> str:
    resources = document.get("resources")
    if not isinstance(resources, dict):
        return ""
    worst: tuple[int, str] | None = None
    for name, trend in resources.items():
        if not isinstance(trend, dict):
            continue
        slope, unit = trend.get("slope_per_hour"), trend.get("unit", "")
        rank = STATE_RANK.get(str(trend.get("state")), -1)
        if isinstance(slope, (int, float)) and (worst is None or rank > worst[0]):
            worst = (rank, f"{name} {slope:+.1f} {unit}/h")
    return worst[1] if worst else ""


def _signal_detail(kind: str, document: dict[str, Any]) -> str:
    if kind == "drift":
        psi = largest(document, "psi")
        return "" if psi is None else f"max PSI {psi:.3f}"
    if kind == "bias":
        gap = largest(document, "max_difference")
        return "" if gap is None else f"max parity gap {gap:.3f}"
    return _leak_detail(document)


class TopModel:
    """The latest of what one device said, as rows: ``apply()`` each message, ``rows()`` to draw."""

    def __init__(self, prefix: str, device_id: str, camera_name: str = HEALTH_CAMERA) -> None:
        self.prefix = prefix
        self.device_id = device_id
        self.camera_name = camera_name
        self.status: StatusPayload | None = None
        self.model: ModelPayload | None = None
        self.deployment: DeploymentPayload | None = None
        self.health: HealthPayload | None = None
        self.latency: LatencyPayload | None = None
        self.signals: dict[str, dict[str, Any]] = {}
        self.events: deque[EventPayload] = deque(maxlen=MAX_EVENTS)
        self.rejected = 0
        self.handlers: dict[str, Callable[[Any], None]] = {
            "status": self._on_status,
            "model": self._on_model,
            "deployment": self._on_deployment,
            "events": self._on_event,
            "telemetry/health": self._on_health,
            "telemetry/latency": self._on_latency,
            **{f"telemetry/{kind}": self._signal(kind) for kind in SIGNALS},
        }
        """By topic suffix; a suffix with no handler is not shown."""

    @property
    def filters(self) -> list[str]:
        """What to subscribe to for this device."""
        return [f"{self.prefix}/{self.device_id}/{suffix}" for suffix in self.handlers]

    def apply(self, topic: str, data: bytes) -> bool:
        """Take one message; True when it changed what the view shows. An empty retained payload clears."""
        where = split_topic(self.prefix, topic)
        if where is None or where[0] != self.device_id:
            return False
        handler = self.handlers.get(where[1])
        if handler is None:
            return False
        try:
            payload = decode(where[1], data) if data else None
        except PayloadError:
            self.rejected += 1
            return True
        handler(payload)
        return True

    # ----- per topic -------------------------------------------------------------------------
    def _on_status(self, payload: StatusPayload | None) -> None:
        self.status = payload

    def _on_model(self, payload: ModelPayload | None) -> None:
        self.model = payload

    def _on_deployment(self, payload: DeploymentPayload | None) -> None:
        self.deployment = payload

    def _on_event(self, payload: EventPayload | None) -> None:
        if payload is not None:
            self.events.append(payload)

    def _on_health(self, payload: HealthPayload | None) -> None:
        self.health = payload

    def _on_latency(self, payload: LatencyPayload | None) -> None:
        self.latency = payload

    def _signal(self, kind: str) -> Callable[[dict[str, Any] | None], None]:
        def update(payload: dict[str, Any] | None) -> None:
            if payload is None:
                self.signals.pop(kind, None)
            else:
                self.signals[kind] = payload
        return update

    # ----- rows ------------------------------------------------------------------------------
    def _model_row(self) -> ModelRow | None:
        if self.model is not None:
            previous = self.model.previous
            return ModelRow(self.model.name, self.model.version, self.model.runtime, self.model.since,
                            f"{previous.name} {previous.version}" if previous else None)
        brief = self.health.model if self.health is not None else None
        return None if brief is None else ModelRow(brief.name, brief.version, brief.runtime, None, None)

    def _latency_rows(self) -> list[LatencyRow]:
        if self.latency is None:
            return []
        stages = sorted(self.latency.stages.items(), key=lambda item: (item[0] != END_TO_END, item[0]))
        return [LatencyRow(name, stats) for name, stats in stages]

    def _deployment_row(self) -> DeploymentRow | None:
        d = self.deployment
        if d is None:
            return None
        error = f"{d.error.code}: {d.error.message}" if d.error else None
        return DeploymentRow(d.deployment_id, d.name, d.version, d.state, d.step, d.progress, error, d.updated)

    def _camera_rows(self) -> list[CameraRow]:
        if self.health is None:
            return []
        if self.health.cameras:
            return [CameraRow(c.name, c.state, c.fps, c.reopens, c.last_error) for c in self.health.cameras]
        camera = self.health.camera  # an agent from before the cameras list
        if camera is None:
            return []
        return [CameraRow(self.camera_name, camera.state, camera.fps, camera.reopens, camera.last_error)]

    def rows(self, now: float) -> TopRows:
        """The view at device time ``now`` (seconds; the uptime is counted to it)."""
        status = self.status
        started = status.started_at if status is not None and status.state == DeviceState.ONLINE else None
        latency = self.latency
        signals = [SignalRow(kind, _signal_state(self.signals[kind]), _signal_detail(kind, self.signals[kind]))
                   if kind in self.signals else SignalRow(kind, NONE, "") for kind in SIGNALS]
        return TopRows(
            device_id=self.device_id,
            status=status.state if status is not None else "unknown",
            agent_version=status.agent_version if status is not None else None,
            uptime_s=max(0.0, now - started) if started is not None else None,
            fps=latency.fps if latency is not None else None,
            frames_processed=(latency.frames_processed if latency is not None
                              else self.health.frames_processed if self.health is not None else None),
            frames_dropped=latency.frames_dropped if latency is not None else None,
            cameras=self._camera_rows(),
            model=self._model_row(),
            latency=self._latency_rows(),
            deployment=self._deployment_row(),
            signals=signals,
            events=[EventRow(e.ts, e.severity, e.kind, e.message) for e in reversed(self.events)],
            rejected=self.rejected,
        )
