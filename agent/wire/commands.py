"""What the agent accepts: every command model and their parsing, with named errors.

A command arrives on ``<prefix>/<id>/cmd/<name>`` (or a group's) as a JSON object
carrying an ``id``; ``parse_command`` refuses what is too large, not JSON, unknown or
not of its model with a ``CommandError`` that names the field and, when it could be
read, the command's id (so that the reply can echo it).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.core import CodedError, ModelName, ModelVersion
from agent.wire.base import MAX_ID_LENGTH, MAX_TEXT_LENGTH, MAX_URL_LENGTH, WireModel, describe, is_text

__all__ = [
    "ARTIFACT_URL_SCHEMES",
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "ArtifactStatement",
    "BehaviourSpec",
    "CamerasCommand",
    "Command",
    "CommandBase",
    "CommandError",
    "DeployCommand",
    "ErrorCode",
    "PingCommand",
    "ProbationSpec",
    "PromoteCommand",
    "RollbackCommand",
    "ShadowOptions",
    "StatusCommand",
    "parse_command",
    "register_command",
]

MAX_COMMAND_BYTES = 64 * 1024
"""Larger command payloads are refused before they are parsed."""
SIGNATURE_BYTES = 64
"""An ed25519 signature."""
ARTIFACT_URL_SCHEMES = ("http", "https", "file")

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


class CommandError(CodedError, ValueError):
    """A command cannot be accepted; ``code`` is machine-readable, ``message`` names the field.

    Also a ValueError, as it was before the error root: callers that catch ValueError still do."""

    def __init__(self, code: ErrorCode, message: str, command_id: str | None = None) -> None:
        super().__init__(code, message)
        self.code: ErrorCode = code
        self.command_id = command_id
        """The command's ``id`` when it could be read, so that the reply can echo it."""


class CommandBase(WireModel):
    """What every command carries: its ``id`` and, when it is signed, ``ts``, ``nonce`` and the signature."""

    command_name: ClassVar[str]
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if not is_text(value):
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


class BehaviourSpec(WireModel):
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


class ProbationSpec(WireModel):
    window_s: float = Field(gt=0, description="how long the new model is watched, seconds")
    max_error_rate: float = Field(ge=0, le=1, description="failed frames / frames")
    max_latency_ratio: float = Field(ge=1, description="new p95 latency / old p95 latency")
    behaviour: BehaviourSpec | None = Field(default=None, description="bounds on what the new model outputs")


class ShadowOptions(WireModel):
    """A shadow deploy's own terms; an absent one is the agent's ``[deploy] shadow_*``.

    Refused at parse (``bad_payload``, nothing changes): a ``min_agreement`` or
    ``min_text_agreement`` outside [0, 1] and a zero budget."""

    min_agreement: float | None = Field(default=None, ge=0, le=1,
                                        description="mean per-frame agreement, 0..1, needed to promote")
    min_text_agreement: float | None = Field(default=None, ge=0, le=1,
                                             description="mean character agreement, 0..1, of the texts read in "
                                                         "the matched boxes, needed to promote where text was read")
    min_frames: int | None = Field(default=None, ge=1, description="compared frames (all cameras) the decision needs")
    budget: int | None = Field(default=None, ge=1, description="the candidate sees every n-th frame of each camera")
    duration_s: float | None = Field(default=None, gt=0, description="the longest the shadow run lasts, seconds")
    auto_promote: bool | None = Field(default=None, description="false: wait for a promote command")


def _ed25519_base64(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(f"must decode to {SIGNATURE_BYTES} bytes, got {len(raw)}")
    return value


class ArtifactStatement(WireModel):
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
    mode: Literal["swap", "shadow"] = Field(default="swap", description="shadow: judged beside the serving "
                                                                        "model on live frames before it serves")
    shadow: ShadowOptions | None = Field(default=None, description="shadow mode's terms")

    @model_validator(mode="after")
    def _shadow_needs_mode(self) -> DeployCommand:
        if self.shadow is not None and self.mode != "shadow":
            raise ValueError("'shadow' options need \"mode\": \"shadow\"")
        return self

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
    """``cmd/rollback``: model ``name`` (default: the first stage) back to its previous version."""

    command_name: ClassVar[str] = "rollback"
    reason: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)
    name: ModelName | None = Field(default=None, description="the model to roll back: the first stage's "
                                                             "(default) or a second stage a camera names")


class PromoteCommand(CommandBase):
    """``cmd/promote``: serve the candidate of a shadow run that met its bound and waits (``auto_promote`` false)."""

    command_name: ClassVar[str] = "promote"


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


Command = PingCommand | StatusCommand | DeployCommand | RollbackCommand | PromoteCommand


COMMANDS: dict[str, type[CommandBase]] = {
    cls.command_name: cls for cls in (PingCommand, StatusCommand, DeployCommand, RollbackCommand, PromoteCommand,
                                        CamerasCommand)
}
"""Command model by name (what follows ``cmd/``); agent.wire.signals adds feedback."""


def register_command(model: type[CommandBase]) -> None:
    """Accept a command beyond the core ones (agent.wire.signals adds feedback)."""
    COMMANDS[model.command_name] = model


def _read_id(document: object) -> str | None:
    if isinstance(document, dict):
        value = document.get("id")
        if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and is_text(value):
            return value
    return None


def parse_command(name: str, payload: bytes) -> CommandBase:
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
        raise CommandError("bad_payload", f"{name}: {describe(exc)}", command_id) from None
    return command
