"""What the agent publishes: the envelope and every core payload, by topic suffix.

What the agent publishes carries an envelope: ``schema_version``, ``device_id``, ``ts``
(device unix time, seconds) and ``seq`` (per topic, increasing by one per message; see
``Sequencer``). ``PAYLOADS`` maps each topic suffix to its model; agent.wire.signals and
agent.wire.results add theirs with ``register_payload``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from agent.wire.base import (
    ERROR_CODE_PATTERN,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    SCHEMA_VERSION,
    SHA256_PATTERN,
    PayloadError,
    WireModel,
    describe,
)
from agent.wire.states import CameraState, DeploymentState, DeviceState, OutboxState, SessionState

__all__ = [
    "PAYLOADS",
    "BrokerHealth",
    "CameraHealth",
    "CameraLatency",
    "CameraStatus",
    "CamerasPayload",
    "DeploymentPayload",
    "Envelope",
    "ErrorInfo",
    "EventPayload",
    "HealthPayload",
    "LatencyPayload",
    "ModelBrief",
    "ModelPayload",
    "ModelRef",
    "ReplyPayload",
    "ResultsHealth",
    "Sequencer",
    "Severity",
    "StageLatency",
    "StageModel",
    "StatusPayload",
    "decode_payload",
    "encode_payload",
    "register_payload",
]

_VALUE = Field(strict=False)
"""A state field takes its enum member or the member's value (the models are strict otherwise);
JSON carries the value either way."""


Severity = Literal["info", "warning", "alarm"]
"""How much an event matters: ``alarm`` wants a person, ``warning`` a look, ``info`` a record."""


class Envelope(WireModel):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    device_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    ts: float = Field(ge=0, description="device unix time of the message, seconds")
    seq: int = Field(ge=0, description="per topic, +1 per message; a gap means lost messages")


class ErrorInfo(WireModel):
    code: str = Field(pattern=ERROR_CODE_PATTERN)
    message: str = Field(max_length=MAX_TEXT_LENGTH)


class ModelRef(WireModel):
    name: str
    version: str


class StatusPayload(Envelope):
    state: Annotated[DeviceState, _VALUE]
    agent_version: str
    started_at: float = Field(ge=0, description="unix time the agent process started, seconds")
    groups: tuple[str, ...] = ()


class StageModel(WireModel):
    """A second stage's serving model (a recognizer a camera names)."""

    name: str
    version: str
    sha256: str = Field(pattern=SHA256_PATTERN)
    since: float = Field(ge=0, description="unix time this version started serving, seconds")
    previous: ModelRef | None = None


class ModelPayload(Envelope):
    name: str
    version: str
    sha256: str = Field(pattern=SHA256_PATTERN)
    runtime: str = Field(description="onnxruntime or tensorrt, with the execution provider")
    since: float = Field(ge=0, description="unix time this model started serving, seconds")
    previous: ModelRef | None = None
    second_stages: list[StageModel] = Field(default_factory=list, description="the second stages serving, "
                                                                              "by model name")


class DeploymentPayload(Envelope):
    deployment_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str
    version: str
    state: Annotated[DeploymentState, _VALUE]
    step: str = Field(max_length=MAX_TEXT_LENGTH, description="what the agent is doing now")
    progress: float = Field(ge=0, le=1)
    error: ErrorInfo | None = None
    updated: float = Field(ge=0, description="unix time of this state, seconds")
    shadow: dict[str, Any] | None = Field(default=None, description="a shadow run's report: frames compared, "
                                                                    "agreement, per camera (docs/deployment.md)")


class ReplyPayload(Envelope):
    id: str | None = Field(
        min_length=1, max_length=MAX_ID_LENGTH, description="null: the command's id was unreadable"
    )
    ok: bool
    command: str
    error: ErrorInfo | None = None
    result: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _error_iff_not_ok(self) -> ReplyPayload:
        if self.ok == (self.error is not None):
            raise ValueError("a reply carries an error exactly when ok is false")
        if self.ok and self.id is None:
            raise ValueError("a successful reply echoes the command's id")
        return self


class EventPayload(Envelope):
    kind: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    severity: Severity
    message: str = Field(max_length=MAX_TEXT_LENGTH)
    data: dict[str, Any] = Field(default_factory=dict)


class CameraHealth(WireModel):
    state: Annotated[CameraState, _VALUE]
    reopens: int = Field(ge=0)
    last_error: str | None = None
    fps: float = Field(ge=0)


class BrokerHealth(WireModel):
    state: Annotated[SessionState, _VALUE] = Field(description="the MQTT session's state")
    reconnects: int = Field(ge=0)


class ModelBrief(WireModel):
    name: str
    version: str
    runtime: str


class CameraStatus(WireModel):
    """One camera in ``telemetry/health``: its capture and what the engine made of it."""

    name: str
    state: Annotated[CameraState, _VALUE] = Field(
        description="starting, open, reconnecting, stalled, blocked, ended, stopped; "
        "disabled (configured, not opened); refused (this OpenCV can never open it)")
    reopens: int = Field(ge=0)
    last_error: str | None = None
    fps: float = Field(ge=0, description="capture rate")
    inferred_fps: float = Field(ge=0, description="frames inferred per second")
    frames_captured: int = Field(ge=0)
    frames_overwritten: int = Field(ge=0, description="frames replaced by a newer one before the engine took them")
    frames_inferred: int = Field(ge=0)
    errors: int = Field(ge=0, description="frames of this camera that failed to infer")


class ResultsHealth(WireModel):
    """What the cameras' results became since start (every camera together; docs/results.md)."""

    published: int = Field(ge=0, description="results messages sent")
    dropped_offline: int = Field(ge=0, description="results not sent: the broker was away (QoS 0, never queued)")
    held: int = Field(ge=0, description="frames the rate kept back (by design, not a loss)")
    pending: int = Field(default=0, ge=0, description="frames' outcomes handed to the publisher and not yet "
                         "published (a backlog that stays high: the broker link or the loop is behind)")
    events: int = Field(ge=0, description="object, zone and line events handed to the outbox")
    counts: int = Field(ge=0, description="retained counts published (on a change)")
    handoff_dropped: int = Field(ge=0, description="frames' outcomes the frame thread could not hand to the "
                                 "publisher (its queue was full): their results and events are lost")
    failures: int = Field(ge=0, description="frames whose results failed (logged; inference goes on)")
    snapshots_sent: int = Field(default=0, ge=0, description="event pictures sent on snapshots/<camera> (sink mqtt)")
    snapshots_dropped_offline: int = Field(default=0, ge=0, description="event pictures not sent: the broker "
                                           "was away (never queued)")
    snapshots_blocked: int = Field(default=0, ge=0, description="event pictures the egress guard kept in "
                                   "(not a JPEG, or over egress_max_image_bytes)")
    snapshots_dropped_queue: int = Field(default=0, ge=0, description="event pictures dropped on the device: "
                                         "too many bytes of them waited for the publisher")
    second_stage_frames: int = Field(default=0, ge=0, description="frames whose boxes a second stage read")
    second_stage_crops: int = Field(default=0, ge=0, description="boxes (crops) it read")
    second_stage_failures: int = Field(default=0, ge=0, description="frames whose reading failed (logged as "
                                       "second_stage_failed; their results go out without text)")


class HealthPayload(Envelope):
    uptime_s: float = Field(ge=0)
    camera: CameraHealth | None = Field(
        description="the first camera (kept for readers of one camera); null when no camera is configured; "
        "see cameras")
    broker: BrokerHealth
    model: ModelBrief | None
    cpu_percent: float = Field(ge=0, description="process CPU, percent of one core")
    memory_rss_bytes: int = Field(ge=0)
    memory_available_bytes: int = Field(ge=0)
    temperatures_c: dict[str, float] = Field(default_factory=dict)
    gpu_load: float | None = Field(default=None, ge=0, le=1, description="fraction busy")
    disk_free_bytes: int = Field(ge=0)
    outbox_depth: int = Field(ge=0)
    outbox_dropped: int | None = Field(
        default=None,
        ge=0,
        description="messages the outbox dropped unsent (full or too old), over the device's life",
    )
    outbox_state: Annotated[OutboxState, _VALUE] = Field(
        default=OutboxState.DISK,
        description="memory: the outbox database takes no writes (full disk, read-only) and "
        "messages wait in memory, bounded, lost with the process",
    )
    frames_processed: int = Field(ge=0)
    task_failures: dict[str, int] = Field(
        default_factory=dict,
        description="failures caught at the boundary of each of the agent's tasks, since start",
    )
    cameras: list[CameraStatus] = Field(default_factory=list, description="every configured camera")
    results: ResultsHealth | None = Field(default=None, description="the cameras' results, events and counts")


class StageLatency(WireModel):
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    max_ms: float = Field(ge=0)
    count: int = Field(ge=0)


class CameraLatency(WireModel):
    """One camera in ``telemetry/latency``."""

    name: str
    window_frames: int = Field(ge=0)
    fps: float = Field(ge=0)
    frames_processed: int = Field(ge=0)
    frames_dropped: int = Field(ge=0)
    stages: dict[str, StageLatency]


class LatencyPayload(Envelope):
    window_frames: int = Field(ge=0)
    fps: float = Field(ge=0)
    frames_processed: int = Field(ge=0)
    frames_dropped: int = Field(ge=0)
    stages: dict[str, StageLatency]
    cameras: list[CameraLatency] = Field(default_factory=list, description="the same, per camera")


class CamerasPayload(Envelope):
    """Retained ``cameras``: every configured camera, as the agent runs it now."""

    cameras: list[dict[str, Any]] = Field(
        description="the [[camera]] entries (uri with any user:password@ redacted), each with its "
        "`state` (open, reconnecting, disabled, ...)")
    source: Literal["config", "commands"] = Field(
        description="config: the config file's cameras; commands: the set last changed by cmd/cameras "
        "(kept in <state_dir>/cameras.json)")


PAYLOADS: dict[str, type[Envelope]] = {
    "status": StatusPayload,
    "model": ModelPayload,
    "deployment": DeploymentPayload,
    "reply": ReplyPayload,
    "events": EventPayload,
    "telemetry/health": HealthPayload,
    "telemetry/latency": LatencyPayload,
    "cameras": CamerasPayload,
}
"""Payload model by topic suffix (what follows ``<prefix>/<device>/``)."""


class Sequencer:
    """Hands out per-topic sequence numbers: 1, 2, 3, ... for each key (a topic suffix).

    ``snapshot()`` gives the last number handed out per key; a Sequencer built from a
    saved snapshot continues after it, so sequences survive a restart. Thread-safe.
    """

    def __init__(self, state: Mapping[str, int] | None = None) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()
        for key, value in (state or {}).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"sequence of {key!r} must be an integer >= 0, got {value!r}")
            self._last[key] = value

    def next(self, key: str) -> int:
        with self._lock:
            value = self._last.get(key, 0) + 1
            self._last[key] = value
            return value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._last)


def register_payload(suffix: str, model: type[Envelope]) -> None:
    """Add a payload published under ``<prefix>/<id>/<suffix>`` (agent.wire.signals adds drift, bias, leak)."""
    PAYLOADS[suffix] = model


M = TypeVar("M", bound=BaseModel)


def encode_payload(payload: BaseModel) -> bytes:
    """The JSON bytes of a payload, field names as on the wire."""
    return payload.model_dump_json(by_alias=True).encode()


def decode_payload(model: type[M], data: bytes) -> M:
    """Read a payload of ``model`` (the consumer side); raises PayloadError naming the field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        if any(item["type"] == "json_invalid" for item in exc.errors()):
            raise PayloadError(f"{model.__name__}: not valid JSON") from None
        raise PayloadError(f"{model.__name__}: {describe(exc)}") from None
