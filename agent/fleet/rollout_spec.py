"""A rollout's request and its first record: what the command line asks, planned over the fleet.

``RolloutSpec`` is what to deploy where. ``plan_rollout`` turns it into a new
``RolloutRecord`` from the retained view of the group: the online devices not yet
on the version, in waves (:mod:`agent.fleet.plan`); ``check_resume`` makes sure a
resumed rollout is asked for what it was started with. Pure, no I/O: running the
record to its outcome is :class:`agent.fleet.rollout.Rollout`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent.fleet.errors import FleetError
from agent.fleet.plan import RolloutPlan, assign_waves
from agent.fleet.record import DeviceEntry, PlanModel, RecordError, RolloutRecord, deployment_id_for
from agent.fleet.view import FleetView
from agent.wire import DeviceState

__all__ = ["RolloutError", "RolloutSpec", "check_resume", "plan_rollout"]


class RolloutError(FleetError, RuntimeError):
    """The rollout cannot start or go on; the message says why."""


@dataclass(frozen=True)
class RolloutSpec:
    """What to deploy where, as the command line gives it."""

    group: str
    name: str
    version: str
    url: str
    sha256: str
    format: str
    plan: RolloutPlan
    statement: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    """The canary's shadow terms (a deploy's ``shadow``: ``duration_s``, ``min_agreement``, ...); None: no shadow."""


def plan_rollout(rollout_id: str, spec: RolloutSpec, view: FleetView, now: float | None = None) -> RolloutRecord:
    """A new record: the group's online devices not yet on the version, in waves."""
    members = view.in_group(spec.group)
    if not members:
        raise RolloutError(f"no device reports group {spec.group!r} in its retained status")
    online = [d for d in members if d.status == DeviceState.ONLINE]
    already = [d.device_id for d in online if d.model == spec.name and d.version == spec.version]
    targets = [d.device_id for d in online if d.device_id not in already]
    skipped = [d.device_id for d in members if d.status != DeviceState.ONLINE]
    if not targets and not already:
        raise RolloutError(f"no device of group {spec.group!r} is online ({len(skipped)} offline or lost)")
    waves = assign_waves(rollout_id, targets, spec.plan) if targets else []
    devices = {
        device: DeviceEntry(stage=stage, deployment_id=deployment_id_for(rollout_id, device))
        for stage, wave in enumerate(waves) for device in wave
    }
    return RolloutRecord(
        rollout_id=rollout_id, created=time.time() if now is None else now, group=spec.group, name=spec.name,
        version=spec.version, url=spec.url, sha256=spec.sha256, format=spec.format, statement=spec.statement,
        plan=PlanModel.model_validate(spec.plan.to_json()), shadow=spec.shadow, waves=waves, devices=devices,
        already=already, skipped=skipped,
    )


def check_resume(record: RolloutRecord, spec: RolloutSpec) -> None:
    """A resumed rollout must be asked for the same thing it was started with."""
    for field in ("group", "name", "version", "url"):
        saved, given = getattr(record, field), getattr(spec, field)
        if saved != given:
            raise RecordError(f"rollout {record.rollout_id} was started with --{field} {saved!r}, "
                              f"not {given!r}; resume it with the same options or start a new one")
