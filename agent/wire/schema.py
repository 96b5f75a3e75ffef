"""The wire contract: every payload the agent publishes and every command it accepts.

All payloads are JSON objects validated by the pydantic models below
(``extra="forbid"``, strict types, no NaN/Infinity). What the agent publishes
carries an envelope: ``schema_version``, ``device_id``, ``ts`` (device unix time,
seconds) and ``seq`` (per topic, increasing by one per message; see ``Sequencer``).
docs/mqtt.md describes the same contract for the people on the other side.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.names import ModelName, ModelVersion

__all__ = [
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "PAYLOADS",
    "SCHEMA_VERSION",
    "ArtifactStatement",
    "BehaviourSpec",
    "BrokerHealth",
    "CameraHealth",
    "CameraLatency",
    "CameraStatus",
    "CamerasCommand",
    "CamerasPayload",
    "Command",
    "CommandBase",
    "CommandError",
    "DeployCommand",
    "DeploymentPayload",
    "Envelope",
    "ErrorInfo",
    "EventPayload",
    "HealthPayload",
    "LatencyPayload",
    "ModelBrief",
    "ModelPayload",
    "ModelRef",
    "PayloadError",
    "PingCommand",
    "ProbationSpec",
    "ReplyPayload",
    "ResultsHealth",
    "RollbackCommand",
    "Sequencer",
    "StageLatency",
    "StatusCommand",
    "StatusPayload",
    "clip_text",
    "decode_payload",
    "encode_payload",
    "json_schemas",
    "parse_command",
    "register_command",
    "register_payload",
]

SCHEMA_VERSION = 1
MAX_COMMAND_BYTES = 64 * 1024
"""Larger command payloads are refused before they are parsed."""
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 1024
MAX_URL_LENGTH = 2048
SIGNATURE_BYTES = 64
"""An ed25519 signature."""
ARTIFACT_URL_SCHEMES = ("http", "https", "file")
ERROR_CODE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

ErrorCode = Literal[
    "bad_json",
    "bad_payload",
    "unknown_command",
    "payload_too_large",
    "unsigned",
    "bad_signature",
    "stale",
    "replayed",
]
"""Payload errors, then refusals of the command authority (agent.mqtt.authority)."""
DeploymentState = Literal[
    "received",
    "downloading",
    "verifying",
    "building",
    "loading",
    "warming",
    "validating",
    "active",
    "committed",
    "failed",
    "rolled_back",
]


class PayloadError(ValueError):
    """A payload is not valid JSON or does not match its model; the message names the field."""


class CommandError(ValueError):
    """A command cannot be accepted; ``code`` is machine-readable, ``message`` names the field."""

    def __init__(self, code: ErrorCode, message: str, command_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.command_id = command_id
        """The command's ``id`` when it could be read, so that the reply can echo it."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --- what the agent publishes -------------------------------------------------------------


class Envelope(_Wire):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    device_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    ts: float = Field(ge=0, description="device unix time of the message, seconds")
    seq: int = Field(ge=0, description="per topic, +1 per message; a gap means lost messages")


class ErrorInfo(_Wire):
    code: str = Field(pattern=ERROR_CODE_PATTERN)
    message: str = Field(max_length=MAX_TEXT_LENGTH)


class ModelRef(_Wire):
    name: str
    version: str


class StatusPayload(Envelope):
    state: Literal["online", "offline", "lost"]
    agent_version: str
    started_at: float = Field(ge=0, description="unix time the agent process started, seconds")
    groups: tuple[str, ...] = ()


class ModelPayload(Envelope):
    name: str
    version: str
    sha256: str = Field(pattern=SHA256_PATTERN)
    runtime: str = Field(description="onnxruntime or tensorrt, with the execution provider")
    since: float = Field(ge=0, description="unix time this model started serving, seconds")
    previous: ModelRef | None = None


class DeploymentPayload(Envelope):
    deployment_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str
    version: str
    state: DeploymentState
    step: str = Field(max_length=MAX_TEXT_LENGTH, description="what the agent is doing now")
    progress: float = Field(ge=0, le=1)
    error: ErrorInfo | None = None
    updated: float = Field(ge=0, description="unix time of this state, seconds")


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
    severity: Literal["info", "warning", "alarm"]
    message: str = Field(max_length=MAX_TEXT_LENGTH)
    data: dict[str, Any] = Field(default_factory=dict)


class CameraHealth(_Wire):
    state: str
    reopens: int = Field(ge=0)
    last_error: str | None = None
    fps: float = Field(ge=0)


class BrokerHealth(_Wire):
    state: str
    reconnects: int = Field(ge=0)


class ModelBrief(_Wire):
    name: str
    version: str
    runtime: str


class CameraStatus(_Wire):
    """One camera in ``telemetry/health``: its capture and what the engine made of it."""

    name: str
    state: str = Field(description="starting, open, reconnecting, stalled, blocked, ended, stopped; "
                       "disabled (configured, not opened); refused (this OpenCV can never open it)")
    reopens: int = Field(ge=0)
    last_error: str | None = None
    fps: float = Field(ge=0, description="capture rate")
    inferred_fps: float = Field(ge=0, description="frames inferred per second")
    frames_captured: int = Field(ge=0)
    frames_overwritten: int = Field(ge=0, description="frames replaced by a newer one before the engine took them")
    frames_inferred: int = Field(ge=0)
    errors: int = Field(ge=0, description="frames of this camera that failed to infer")


class ResultsHealth(_Wire):
    """What the cameras' results became since start (every camera together; docs/results.md)."""

    published: int = Field(ge=0, description="results messages sent")
    dropped_offline: int = Field(ge=0, description="results not sent: the broker was away (QoS 0, never queued)")
    held: int = Field(ge=0, description="frames the rate kept back (by design, not a loss)")
    events: int = Field(ge=0, description="object, zone and line events handed to the outbox")
    counts: int = Field(ge=0, description="retained counts published (on a change)")
    handoff_dropped: int = Field(ge=0, description="frames' outcomes the frame thread could not hand to the "
                                 "publisher (its queue was full): their results and events are lost")
    failures: int = Field(ge=0, description="frames whose results failed (logged; inference goes on)")


class HealthPayload(Envelope):
    uptime_s: float = Field(ge=0)
    camera: CameraHealth = Field(description="the first camera (kept for readers of one camera); see cameras")
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
    outbox_state: Literal["disk", "memory"] = Field(
        default="disk",
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


class StageLatency(_Wire):
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    max_ms: float = Field(ge=0)
    count: int = Field(ge=0)


class CameraLatency(_Wire):
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


PAYLOADS: dict[str, type[Envelope]] = {
    "status": StatusPayload,
    "model": ModelPayload,
    "deployment": DeploymentPayload,
    "reply": ReplyPayload,
    "events": EventPayload,
    "telemetry/health": HealthPayload,
    "telemetry/latency": LatencyPayload,
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


# --- what the agent accepts ---------------------------------------------------------------


class CommandBase(_Wire):
    command_name: ClassVar[str]
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if not _is_text(value):
            raise ValueError("must be printable UTF-8 text (no control characters)")
        return value
    ts: float | None = Field(
        default=None, ge=0, description="sender unix time, seconds; required when signed"
    )
    nonce: str | None = Field(
        default=None, max_length=MAX_ID_LENGTH, description="never used twice; required when signed"
    )
    command_signature: str | None = Field(
        default=None,
        max_length=2 * SIGNATURE_BYTES,
        description="base64 ed25519 over the canonical command (docs/security.md)",
    )


class PingCommand(CommandBase):
    command_name: ClassVar[str] = "ping"


class StatusCommand(CommandBase):
    command_name: ClassVar[str] = "status"


class BehaviourSpec(_Wire):
    """A deploy's own behavioural probation bounds; an absent one is the agent's ``[deploy] behaviour_*``."""

    min_frames: int | None = Field(default=None, ge=1, description="frames per camera, new and old, to judge")
    min_count_ratio: float | None = Field(default=None, gt=0, description="new / old detections per frame, lowest")
    max_count_ratio: float | None = Field(default=None, gt=0, description="new / old detections per frame, highest")
    max_score_js: float | None = Field(default=None, gt=0, le=1, description="score distribution JS, new vs old")
    max_label_js: float | None = Field(default=None, gt=0, le=1, description="label mix JS, new vs old")
    max_reference_psi: float | None = Field(default=None, gt=0, description="output PSI against the reference")
    max_reference_js: float | None = Field(default=None, gt=0, le=1, description="output JS against the reference")

    @model_validator(mode="after")
    def _ratios(self) -> BehaviourSpec:
        low, high = self.min_count_ratio, self.max_count_ratio
        if low is not None and high is not None and low >= high:
            raise ValueError(f"min_count_ratio {low} must be below max_count_ratio {high}")
        return self


class ProbationSpec(_Wire):
    window_s: float = Field(gt=0, description="how long the new model is watched, seconds")
    max_error_rate: float = Field(ge=0, le=1, description="failed frames / frames")
    max_latency_ratio: float = Field(ge=1, description="new p95 latency / old p95 latency")
    behaviour: BehaviourSpec | None = Field(default=None, description="bounds on what the new model outputs")


def _ed25519_base64(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(f"must decode to {SIGNATURE_BYTES} bytes, got {len(raw)}")
    return value


class ArtifactStatement(_Wire):
    """A signed statement: the artifact with ``sha256`` is ``name`` ``version`` in ``format`` until
    ``expires``; the signature covers all five (agent.models.fetch.Statement, docs/security.md)."""

    name: ModelName
    version: ModelVersion
    format: Literal["onnx", "bundle", "engine"]
    sha256: str = Field(description="lower-case hex, as signed")
    expires: int = Field(ge=0, description="unix time, seconds, after which the statement is refused")
    signature: str = Field(max_length=2 * SIGNATURE_BYTES, description="base64 ed25519 over the statement")

    @field_validator("sha256")
    @classmethod
    def _whole_digest(cls, value: str) -> str:
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 64 lower-case hexadecimal digits")
        return value

    @field_validator("signature")
    @classmethod
    def _signature(cls, value: str) -> str:
        return _ed25519_base64(value)


class DeployCommand(CommandBase):
    command_name: ClassVar[str] = "deploy"
    name: ModelName
    version: ModelVersion
    url: str = Field(max_length=MAX_URL_LENGTH)
    sha256: str
    signature: str | None = Field(default=None, description="base64 ed25519 over the artifact's bytes alone: "
                                                            "refused by agents that check signatures (use statement)")
    statement: ArtifactStatement | None = Field(default=None, description="the signed statement of the artifact")
    format: Literal["onnx", "bundle", "engine"] = "onnx"
    probation: ProbationSpec | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ARTIFACT_URL_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(ARTIFACT_URL_SCHEMES)}")
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError("an http(s) URL needs a host")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError("must be 64 hexadecimal digits")
        return value.lower()

    @field_validator("signature")
    @classmethod
    def _signature(cls, value: str | None) -> str | None:
        return None if value is None else _ed25519_base64(value)


class RollbackCommand(CommandBase):
    command_name: ClassVar[str] = "rollback"
    reason: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


Command = PingCommand | StatusCommand | DeployCommand | RollbackCommand
COMMANDS: dict[str, type[Command]] = {
    cls.command_name: cls for cls in (PingCommand, StatusCommand, DeployCommand, RollbackCommand)
}


def register_payload(suffix: str, model: type[Envelope]) -> None:
    """Add a payload published under ``<prefix>/<id>/<suffix>`` (agent.wire.signals adds drift, bias, leak)."""
    PAYLOADS[suffix] = model


def register_command(model: type[CommandBase]) -> None:
    """Accept a command beyond the core ones (agent.wire.signals adds feedback)."""
    COMMANDS[model.command_name] = model


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"field '{where}': {message}" if where else message)
    return "; ".join(parts)


def _is_text(value: str) -> bool:
    """Encodable as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates, which are not)
    and free of control characters, which the agent's egress guard would not let out again."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()


def _read_id(document: object) -> str | None:
    if isinstance(document, dict):
        value = document.get("id")
        if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and _is_text(value):
            return value
    return None


def clip_text(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """``text`` made fit for a free-text field: at most ``limit`` characters, valid UTF-8.

    Error messages name what was wrong, and what was wrong may be huge (a payload with
    thousands of unknown fields) or not text at all; the message must still go out.
    """
    if not _is_text(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        # Newlines and other control characters become spaces: text fields are one line.
        text = "".join(c if c.isprintable() else " " for c in text)
    if len(text) <= limit:
        return text
    marker = f" ... ({len(text) - limit} more characters)"
    return text[: limit - len(marker)] + marker


def parse_command(name: str, payload: bytes) -> Command:
    """Validate the payload of command ``name``; raises CommandError naming what is wrong."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(
            "payload_too_large", f"{len(payload)} bytes, at most {MAX_COMMAND_BYTES} accepted"
        )
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError("bad_json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise CommandError("bad_json", "not valid JSON: nested too deep") from None
    command_id = _read_id(document)
    model = COMMANDS.get(name)
    if model is None:
        known = ", ".join(sorted(COMMANDS))
        raise CommandError("unknown_command", f"{name!r} is not one of {known}", command_id)
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise CommandError("bad_payload", f"must be a JSON object, got {kind}", command_id)
    try:
        command = model.model_validate_json(payload)
    except ValidationError as exc:
        raise CommandError("bad_payload", f"{name}: {_describe(exc)}", command_id) from None
    return command


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
        raise PayloadError(f"{model.__name__}: {_describe(exc)}") from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload by topic suffix: ``status``, ..., ``cmd/deploy``."""
    from agent.wire import results  # noqa: F401  (its payloads register themselves: results/+, counts/+)

    schemas = {suffix: model.model_json_schema(by_alias=True) for suffix, model in PAYLOADS.items()}
    for name, command in COMMANDS.items():
        schemas[f"cmd/{name}"] = command.model_json_schema(by_alias=True)
    return schemas


# --- cameras at run time (docs/cameras.md) -------------------------------------------------


class CamerasCommand(CommandBase):
    """``cmd/cameras``: add, update, remove or list the device's cameras without a restart.

    ``camera`` is one ``[[camera]]`` entry as JSON; the agent checks it with the very model
    that checks the config file (agent.core.config.agent.CameraSection), so a reply names the key."""

    command_name: ClassVar[str] = "cameras"
    action: Literal["add", "update", "remove", "list"]
    camera: dict[str, Any] | None = Field(default=None, description="add, update: the camera entry")
    name: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH,
                             description="remove: the camera's name")

    @model_validator(mode="after")
    def _fields_of_action(self) -> CamerasCommand:
        if self.action in ("add", "update") and self.camera is None:
            raise ValueError(f"'{self.action}' needs 'camera' (a [[camera]] entry)")
        if self.action == "remove" and self.name is None:
            raise ValueError("'remove' needs 'name'")
        return self


class CamerasPayload(Envelope):
    """Retained ``cameras``: every configured camera, as the agent runs it now."""

    cameras: list[dict[str, Any]] = Field(
        description="the [[camera]] entries (uri with any user:password@ redacted), each with its "
        "`state` (open, reconnecting, disabled, ...)")
    source: Literal["config", "commands"] = Field(
        description="config: the config file's cameras; commands: the set last changed by cmd/cameras "
        "(kept in <state_dir>/cameras.json)")


register_command(CamerasCommand)
register_payload("cameras", CamerasPayload)
