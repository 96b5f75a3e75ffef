"""A rollout's persisted state: the plan, the waves, each device's state, the outcome.

One JSON file per rollout under the state directory, rewritten atomically
(temporary file, fsync, rename), validated by pydantic when read back so that a
damaged file is an error naming the field, not a half-resumed rollout. The file
is a cache of what the devices report: on resume the retained ``deployment``
topics say where each device really is.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core import check_name
from agent.fleet.errors import FleetError
from agent.fleet.plan import RolloutPlan
from agent.wire import DeploymentState

__all__ = [
    "DeviceEntry",
    "PlanModel",
    "RecordError",
    "RolloutRecord",
    "RolloutState",
    "RolloutStore",
    "deployment_id_for",
    "new_rollout_id",
]

MAX_DEPLOYMENT_ID = 120
"""Leaves room for the ``-rollback`` suffix within the contract's 128 characters."""
ROLLBACK_SUFFIX = "-rollback"
DEVICE_HASH_CHARS = 16

_D = DeploymentState


class RolloutState(str, Enum):
    """A device's state in a rollout: its deployment's states (same values), and the rollout's own."""

    PENDING = "pending"
    """Not sent yet."""
    SENT = "sent"
    """The deploy command went out; the device has not reported yet."""
    RECEIVED = _D.RECEIVED.value
    DOWNLOADING = _D.DOWNLOADING.value
    VERIFYING = _D.VERIFYING.value
    BUILDING = _D.BUILDING.value
    LOADING = _D.LOADING.value
    WARMING = _D.WARMING.value
    VALIDATING = _D.VALIDATING.value
    SHADOW = _D.SHADOW.value
    ACTIVE = _D.ACTIVE.value
    COMMITTED = _D.COMMITTED.value
    FAILED = _D.FAILED.value
    ROLLED_BACK = _D.ROLLED_BACK.value
    DISCARDED = _D.DISCARDED.value
    TIMEOUT = "timeout"
    """No outcome within the deploy timeout."""
    UNHEALTHY = "unhealthy"
    """Committed, then went offline, left the version or raised an alarm while watched."""
    REVERTED = "reverted"
    """Rolled back by the rollout's abort."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(str.__str__(self), format_spec)

    DEPLOYING: ClassVar[frozenset[RolloutState]]
    """The device is working on the deployment."""
    FINAL_GOOD: ClassVar[frozenset[RolloutState]]
    FINAL_BAD: ClassVar[frozenset[RolloutState]]
    """Final and counted as failed against the rollout's bound."""
    FINAL: ClassVar[frozenset[RolloutState]]
    """Nothing more to wait for in this stage."""
    JUDGED: ClassVar[frozenset[RolloutState]]
    """States the rollout decided; the devices' own reports no longer change them."""
    REVERTIBLE: ClassVar[frozenset[RolloutState]]
    """States after which an abort rolls the device back (when it serves the new version)."""


RolloutState.DEPLOYING = frozenset({
    RolloutState.RECEIVED, RolloutState.DOWNLOADING, RolloutState.VERIFYING, RolloutState.BUILDING,
    RolloutState.LOADING, RolloutState.WARMING, RolloutState.VALIDATING, RolloutState.SHADOW, RolloutState.ACTIVE,
})
RolloutState.FINAL_GOOD = frozenset({RolloutState.COMMITTED})
RolloutState.FINAL_BAD = frozenset({
    RolloutState.FAILED, RolloutState.ROLLED_BACK, RolloutState.DISCARDED, RolloutState.TIMEOUT,
    RolloutState.UNHEALTHY,
})
RolloutState.FINAL = RolloutState.FINAL_GOOD | RolloutState.FINAL_BAD | {RolloutState.REVERTED}
RolloutState.JUDGED = frozenset({RolloutState.TIMEOUT, RolloutState.UNHEALTHY, RolloutState.REVERTED})
RolloutState.REVERTIBLE = frozenset({
    RolloutState.ACTIVE, RolloutState.COMMITTED, RolloutState.UNHEALTHY, RolloutState.TIMEOUT,
})
Outcome = Literal["running", "aborting", "succeeded", "aborted"]


class RecordError(FleetError, ValueError):
    """A rollout record cannot be read or does not fit the command line; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceEntry(_Model):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    """A state assigned as its value becomes its RolloutState member."""

    stage: int = Field(ge=0)
    deployment_id: str = Field(min_length=1, max_length=MAX_DEPLOYMENT_ID)
    state: RolloutState = RolloutState.PENDING
    error: str | None = None
    sent_at: float | None = None
    """Unix time the deploy command was first sent (the deploy timeout counts from it)."""
    last_sent_at: float | None = None
    """Unix time it was last sent; None asks for a send at once (after a resume)."""
    sends: int = Field(default=0, ge=0)
    agreement: float | None = None
    """The device's shadow agreement with its serving model (a shadowed canary), as it last reported it."""

    @property
    def rollback_id(self) -> str:
        return self.deployment_id + ROLLBACK_SUFFIX

    @property
    def final(self) -> bool:
        return self.state in RolloutState.FINAL


class PlanModel(_Model):
    canary_pct: float
    waves_pct: list[float]
    abort_failures_pct: float
    wait_healthy_s: float

    def plan(self) -> RolloutPlan:
        return RolloutPlan(self.canary_pct, tuple(self.waves_pct), self.abort_failures_pct, self.wait_healthy_s)


class RolloutRecord(_Model):
    rollout_id: str
    created: float
    group: str
    name: str
    version: str
    url: str
    sha256: str
    format: str
    statement: dict[str, Any] | None = None
    """The signed statement every device's deploy carries (agent.cli.control.signed_fields)."""
    plan: PlanModel
    shadow: dict[str, Any] | None = None
    """The canary's shadow terms (the deploy's ``shadow``): the canary runs in shadow first; None: it swaps."""
    waves: list[list[str]]
    devices: dict[str, DeviceEntry]
    already: list[str] = Field(default_factory=list, description="devices serving the version before it started")
    skipped: list[str] = Field(default_factory=list, description="devices of the group not online at start")
    stage: int = Field(default=0, ge=0, description="the stage running (== len(waves) when all ran)")
    outcome: Outcome = "running"
    reason: str | None = None

    def deploy_body(self, entry: DeviceEntry) -> dict[str, object]:
        body: dict[str, object] = {"id": entry.deployment_id, "name": self.name, "version": self.version,
                                   "url": self.url, "sha256": self.sha256, "format": self.format}
        if self.statement:
            body["statement"] = self.statement
        if self.shadow is not None and entry.stage == 0:
            body["mode"] = "shadow"
            body["shadow"] = self.shadow
        return body

    def in_stages(self, upto: int) -> list[str]:
        """Devices of stages 0..upto (inclusive)."""
        return [device for wave in self.waves[: upto + 1] for device in wave]

    def count(self, states: Collection[RolloutState], devices: list[str] | None = None) -> int:
        names = self.devices if devices is None else devices
        return sum(self.devices[d].state in states for d in names)


def new_rollout_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"ro-{stamp}-{os.urandom(3).hex()}"


def deployment_id_for(rollout_id: str, device: str) -> str:
    """The deploy command's id (and so the deployment id) of a device in a rollout: stable across resumes."""
    plain = f"{rollout_id}-{device}"
    if len(plain) <= MAX_DEPLOYMENT_ID:
        return plain
    return f"{rollout_id}-{hashlib.sha256(device.encode()).hexdigest()[:DEVICE_HASH_CHARS]}"


class RolloutStore:
    """``<dir>/<rollout-id>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, rollout_id: str) -> Path:
        try:
            check_name(rollout_id, "rollout id")
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        return self.directory / f"{rollout_id}.json"

    def load(self, rollout_id: str) -> RolloutRecord | None:
        path = self.path(rollout_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            return RolloutRecord.model_validate_json(text)
        except ValidationError as exc:
            fields = "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors()[:5])
            raise RecordError(f"{path}: not a rollout record: {fields}") from None

    def save(self, record: RolloutRecord) -> None:
        path = self.path(record.rollout_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(record.model_dump(mode="json"), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
