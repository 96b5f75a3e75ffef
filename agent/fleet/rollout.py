"""A staged rollout over a device group: canary, waves, failure bound, health wait, abort and roll back.

    for each stage (canary, then the waves; cumulative shares of the group):
        send a deploy command to each device of the stage not yet done
            (the command id is the deployment id: ``<rollout-id>-<device>``)
        wait until each has committed, failed or rolled back (the retained
            ``deployment`` topic), or the deploy timeout passed
        abort when failed devices exceed the bound (share of devices tried so far)
        watch the committed devices for ``wait_healthy_s``: they must stay online
            and raise no alarm (events of severity alarm, signal state alarm)
        abort when failures (unhealthy included) exceed the bound
    abort: a rollback command to every device whose retained ``model`` shows the
        new version; the fleet is left on the version it had

With shadow terms (``fleet deploy --shadow``) the canary's deploys run in shadow: each
canary device judges the new model beside its serving one and serves it only on
agreement; a canary device that discards it aborts the rollout before any wave. The
record keeps each device's reported agreement.

The spec and the record a rollout starts from are :mod:`agent.fleet.rollout_spec`.
Everything is written to the rollout record as it happens; a rollout restarted
with the same id reads the record and the retained topics, sends nothing to a
device that already committed, and sends again (same id: the agents answer a
repeat from their journal) to a device whose outcome is unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.core import Progress
from agent.fleet.link import FleetLink
from agent.fleet.plan import failure_share
from agent.fleet.record import DeviceEntry, RolloutRecord, RolloutState, RolloutStore
from agent.fleet.view import Message
from agent.wire import DeploymentPayload, DeploymentState, DeviceState, ReplyPayload, SignalState

__all__ = ["DEFAULT_DEPLOY_TIMEOUT_S", "Rollout", "RolloutResult"]

log = structlog.get_logger(__name__)

DEFAULT_DEPLOY_TIMEOUT_S = 900.0
"""A device that has not committed or failed this long after its deploy command counts as failed."""
RESEND_AFTER_S = 30.0
"""A deploy command with neither reply nor progress after this long is sent again (same id)."""
REFRESH_AFTER_S = 15.0
"""With devices still deploying and no news from any of them for this long, the retained state is read again."""
REVERT_TIMEOUT_S = 120.0
"""How long an abort waits for the rolled-back devices to serve their previous version."""
TICK_S = 0.5
SAVE_EVERY_S = 0.5
"""The record is written at most this often while devices report (and at every stage boundary)."""
SEND_BATCH = 100
STAGE_NAMES = ("canary",)


@dataclass(frozen=True)
class RolloutResult:
    rollout_id: str
    outcome: str
    committed: int
    failed: int
    reverted: int
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.outcome == "succeeded"


def stage_name(index: int) -> str:
    return STAGE_NAMES[index] if index < len(STAGE_NAMES) else f"wave {index}"


def _drop(line: str) -> None:
    """A ``report`` that keeps nothing."""


class Rollout:
    """Runs one record to its outcome through a connected ``FleetLink``.

    ``report`` takes the progress lines for a person (agent/cli/ prints them); without it they are
    dropped, and the record and the log still carry every step. ``progress`` is told, per stage
    (``canary``, ``wave 1``, ...), how many of the stage's devices have an outcome.
    """

    def __init__(self, link: FleetLink, record: RolloutRecord, store: RolloutStore, *,
                 report: Callable[[str], None] | None = None, progress: Progress | None = None,
                 deploy_timeout_s: float = DEFAULT_DEPLOY_TIMEOUT_S, refresh_after_s: float = REFRESH_AFTER_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self.record = record
        self.store = store
        self.plan = record.plan.plan()
        self._report = report or _drop
        self._progress = progress
        self._settled = [sum(record.devices[device].final for device in wave) for wave in record.waves]
        self.deploy_timeout_s = deploy_timeout_s
        self.refresh_after_s = refresh_after_s
        self.clock = clock
        self._news_at = time.monotonic()
        self._dirty = False
        self._saved_at = 0.0

    # ----- what the devices say ----------------------------------------------------------
    def observe(self, message: Message) -> None:
        """Called by the link for every message: follow our deployments and replies."""
        entry = self.record.devices.get(message.device_id)
        if entry is None or entry.state in RolloutState.JUDGED:
            return
        data = message.data
        if isinstance(data, DeploymentPayload) and data.deployment_id == entry.deployment_id:
            error = f"{data.error.code}: {data.error.message}" if data.error else None
            _take_agreement(entry, data)
            self._set(message.device_id, entry, data.state, error)
        elif isinstance(data, ReplyPayload) and data.id == entry.deployment_id:
            if data.error is not None and not entry.final:
                self._set(message.device_id, entry, RolloutState.FAILED, f"{data.error.code}: {data.error.message}")
            elif data.ok:
                # A repeat answered from the agent's journal brings no new deployment state:
                # the retained one (already seen) says where the device is.
                self._follow_retained(message.device_id, entry)

    def _follow_retained(self, device: str, entry: DeviceEntry, quiet: bool = False) -> None:
        deployment = self.link.view.device(device).deployment
        if deployment is not None and deployment.deployment_id == entry.deployment_id:
            error = f"{deployment.error.code}: {deployment.error.message}" if deployment.error else None
            _take_agreement(entry, deployment)
            self._set(device, entry, deployment.state, error, quiet=quiet)

    def reconcile(self) -> None:
        """Take each device's state from its retained deployment topic (after a restart).

        A device recorded as pending may have received its command just before the
        previous run ended: its deployment topic, carrying this rollout's id, says so.
        """
        for device, entry in self.record.devices.items():
            if entry.state == RolloutState.SENT:
                entry.last_sent_at = None
            if entry.state not in RolloutState.JUDGED:
                self._follow_retained(device, entry, quiet=True)

    def _set(self, device: str, entry: DeviceEntry, state: RolloutState | DeploymentState, error: str | None,
             quiet: bool = False) -> None:
        if state == entry.state:
            return
        was_final = entry.final
        entry.state = RolloutState(state)
        if entry.final != was_final:
            self._settled[entry.stage] += 1 if entry.final else -1
            self._stage_progress(entry.stage)
        entry.error = error
        self._dirty = True
        self._news_at = time.monotonic()
        if not quiet:
            detail = f"  ({error})" if error else ""
            agreement = f"  agreement {entry.agreement:.3f}" if entry.agreement is not None else ""
            self._say(f"  {device:<24} {stage_name(entry.stage):<8} {state}{agreement}{detail}")

    def _say(self, line: str) -> None:
        self._report(line)

    def _stage_progress(self, index: int) -> None:
        if self._progress is not None:
            self._progress(stage_name(index), self._settled[index], len(self.record.waves[index]))

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or (self._dirty and now - self._saved_at >= SAVE_EVERY_S):
            self.store.save(self.record)
            self._dirty = False
            self._saved_at = now

    # ----- the run -----------------------------------------------------------------------
    async def run(self) -> RolloutResult:
        record = self.record
        self.reconcile()
        self.save(force=True)
        if record.outcome == "running":
            self._say(f"rollout {record.rollout_id}: {record.name} {record.version} to group {record.group}: "
                      f"{len(record.devices)} devices in {len(record.waves)} stages"
                      + (f", {len(record.already)} already on it" if record.already else "")
                      + (f", {len(record.skipped)} not online (skipped)" if record.skipped else ""))
            while record.stage < len(record.waves) and record.outcome == "running":
                await self._run_stage(record.stage)
                if record.outcome == "running":
                    record.stage += 1
                    self.save(force=True)
            if record.outcome == "running":
                record.outcome = "succeeded"
        if record.outcome == "aborting":
            await self._revert()
            record.outcome = "aborted"
        self.save(force=True)
        return self._result()

    def _result(self) -> RolloutResult:
        record = self.record
        result = RolloutResult(record.rollout_id, record.outcome, record.count(RolloutState.FINAL_GOOD),
                               record.count(RolloutState.FINAL_BAD), record.count({RolloutState.REVERTED}),
                               record.reason)
        log.info("rollout_finished", rollout=record.rollout_id, outcome=result.outcome, committed=result.committed,
                 failed=result.failed, reverted=result.reverted, reason=result.reason)
        self._say(f"rollout {record.rollout_id} {result.outcome}: {result.committed} committed, "
                  f"{result.failed} failed, {result.reverted} rolled back"
                  + (f" ({result.reason})" if result.reason else ""))
        return result

    async def _run_stage(self, index: int) -> None:
        wave = self.record.waves[index]
        self._say(f"{stage_name(index)}: {len(wave)} devices")
        self._stage_progress(index)
        await self._send([d for d in wave if self.record.devices[d].state == RolloutState.PENDING])
        await self._settle(wave)
        tried = self.record.in_stages(index)
        self._summary(index, tried)
        if index == 0 and self.record.shadow is not None and not self._canary_agreed(wave):
            return
        if not self._within_bound(tried):
            return
        if self.plan.wait_healthy_s > 0:
            await self._watch_healthy(tried)
            self._summary(index, tried, healthy=True)
            self._within_bound(tried)

    def _canary_agreed(self, wave: list[str]) -> bool:
        """A shadowed canary: any device that discarded the new model aborts the rollout before the waves."""
        discarded = [d for d in wave if self.record.devices[d].state == DeploymentState.DISCARDED.value]
        agreements = ", ".join(f"{d} {self.record.devices[d].agreement}" for d in wave)
        bound = (self.record.shadow or {}).get("min_agreement", "the agents' [deploy] shadow_min_agreement")
        self._say(f"canary in shadow: agreement {agreements} (bound {bound})")
        if not discarded:
            return True
        self.record.outcome = "aborting"
        self.record.reason = (f"the canary discarded {self.record.version} in shadow on {len(discarded)} of "
                              f"{len(wave)} devices ({', '.join(discarded)})")
        self._say(f"abort: {self.record.reason}")
        self.save(force=True)
        return False

    def _within_bound(self, tried: list[str]) -> bool:
        failed = self.record.count(RolloutState.FINAL_BAD, tried)
        if self.plan.aborts(failed, len(tried)):
            self.record.outcome = "aborting"
            self.record.reason = (f"{failed} of {len(tried)} devices failed "
                                  f"({failure_share(failed, len(tried)):.0%} > {self.plan.abort_failures_pct:g}%)")
            self._say(f"abort: {self.record.reason}")
            self.save(force=True)
            return False
        return True

    def _summary(self, index: int, tried: list[str], healthy: bool = False) -> None:
        record, wave = self.record, self.record.waves[index]
        failed = record.count(RolloutState.FINAL_BAD, tried)
        what = f"healthy for {self.plan.wait_healthy_s:g}s" if healthy else "settled"
        good, bad = RolloutState.FINAL_GOOD, RolloutState.FINAL_BAD
        self._say(f"{stage_name(index)} {what}: {record.count(good, wave)}/{len(wave)} committed, "
                  f"{record.count(bad, wave)} failed; so far {record.count(good, tried)}/"
                  f"{len(record.devices)} committed, failure share {failure_share(failed, len(tried)):.1%} "
                  f"(abort above {self.plan.abort_failures_pct:g}%)")

    async def _send(self, devices: list[str]) -> None:
        for start in range(0, len(devices), SEND_BATCH):
            batch = devices[start:start + SEND_BATCH]
            await asyncio.gather(*(self._send_one(d) for d in batch))
        self.save(force=True)

    async def _send_one(self, device: str) -> None:
        entry = self.record.devices[device]
        await self.link.command("deploy", self.record.deploy_body(entry), device)
        now = self.clock()
        entry.sent_at = entry.sent_at or now
        entry.last_sent_at = now
        entry.sends += 1
        if entry.state == RolloutState.PENDING:
            self._set(device, entry, RolloutState.SENT, None)
        self._dirty = True

    async def _settle(self, wave: list[str]) -> None:
        """Until every device of the wave is final, resending where nothing was heard."""
        while True:
            self.save()
            now = self.clock()
            waiting = [d for d in wave if not self.record.devices[d].final]
            if not waiting:
                return
            resend = []
            for device in waiting:
                entry = self.record.devices[device]
                if entry.sent_at is None:
                    resend.append(device)
                elif now - entry.sent_at > self._timeout_s(entry):
                    self._set(device, entry, RolloutState.TIMEOUT, f"no outcome within {self._timeout_s(entry):g}s")
                elif entry.state == RolloutState.SENT and (entry.last_sent_at is None
                                                         or now - entry.last_sent_at > RESEND_AFTER_S):
                    resend.append(device)
            if resend:
                await self._send(resend)
            await self._refresh_when_quiet()
            await self.link.wait_changed(TICK_S)

    def _timeout_s(self, entry: DeviceEntry) -> float:
        """The deploy timeout, plus the shadow run's duration for a shadowed canary device."""
        shadow = self.record.shadow
        if shadow is None or entry.stage != 0:
            return self.deploy_timeout_s
        return self.deploy_timeout_s + float(shadow.get("duration_s") or 0.0)

    async def _refresh_when_quiet(self) -> None:
        """A broker drops what overflows its queue for one client; the retained state does not lie."""
        if time.monotonic() - self._news_at < self.refresh_after_s:
            return
        self._news_at = time.monotonic()
        log.info("rollout_refresh", rollout=self.record.rollout_id)
        await self.link.refresh()
        for device, entry in self.record.devices.items():
            if entry.state not in RolloutState.JUDGED and entry.state != RolloutState.PENDING:
                self._follow_retained(device, entry)

    async def _watch_healthy(self, devices: list[str]) -> None:
        view = self.link.view
        committed = [d for d in devices if self.record.devices[d].state in RolloutState.FINAL_GOOD]
        baseline = {d: view.device(d).alarms_seen for d in committed}
        self._say(f"watching {len(committed)} committed devices for {self.plan.wait_healthy_s:g}s")
        deadline = asyncio.get_running_loop().time() + self.plan.wait_healthy_s
        while asyncio.get_running_loop().time() < deadline:
            for device in committed:
                entry = self.record.devices[device]
                if entry.state != RolloutState.COMMITTED:
                    continue
                why = self._unhealthy(device, baseline[device])
                if why is not None:
                    self._set(device, entry, RolloutState.UNHEALTHY, why)
            failed = self.record.count(RolloutState.FINAL_BAD, devices)
            if self.plan.aborts(failed, len(devices)):
                return
            self.save()
            await self.link.wait_changed(TICK_S)

    def _unhealthy(self, device: str, alarms_before: int) -> str | None:
        view = self.link.view.device(device)
        if view.status != DeviceState.ONLINE:
            return f"status {view.status}"
        if view.version != self.record.version:
            return f"serves {view.model} {view.version}, not {self.record.version}"
        if view.alarms_seen > alarms_before:
            return "raised an alarm"
        alarmed = [signal for signal, state in view.signals.items() if state == SignalState.ALARM]
        return f"{', '.join(alarmed)} in alarm" if alarmed else None

    # ----- abort -------------------------------------------------------------------------
    def _took_new(self, device: str) -> bool:
        """Serves the new version because of this rollout, and did not roll back by itself.

        Both the record and the retained topics must say so: a rollback command swaps
        to the device's previous model, so one sent to a device that already rolled
        back would put the new version back.
        """
        entry, view = self.record.devices[device], self.link.view.device(device)
        if (entry.state not in RolloutState.REVERTIBLE
                or (view.model, view.version) != (self.record.name, self.record.version)):
            return False
        deployment = view.deployment
        return not (deployment is not None and deployment.deployment_id == entry.deployment_id
                    and deployment.state in DeploymentState.BAD)

    async def _revert(self) -> None:
        """Roll back every device whose retained model shows the new version."""
        record, view = self.record, self.link.view
        targets = [d for d in record.devices if self._took_new(d)]
        self._say(f"rolling back {len(targets)} devices that serve {record.name} {record.version}")
        for device in targets:
            entry = record.devices[device]
            body: dict[str, Any] = {"id": entry.rollback_id, "reason": f"rollout {record.rollout_id} aborted"}
            await self.link.command("rollback", body, device)
        deadline = asyncio.get_running_loop().time() + REVERT_TIMEOUT_S
        pending = set(targets)
        while pending and asyncio.get_running_loop().time() < deadline:
            for device in sorted(pending):
                entry = record.devices[device]
                reply = self.link.reply(device, entry.rollback_id)
                serving = view.device(device).version
                if reply is not None and not reply.ok and reply.error is not None:
                    self._say(f"  {device:<24} rollback refused ({reply.error.code}: {reply.error.message})")
                    pending.discard(device)
                elif serving != record.version:
                    self._set(device, entry, RolloutState.REVERTED, None)
                    pending.discard(device)
            self.save()
            if pending:
                await self._refresh_when_quiet()
                await self.link.wait_changed(TICK_S)
        for device in sorted(pending):
            self._say(f"  {device:<24} did not confirm the rollback within {REVERT_TIMEOUT_S:g}s")
        for device, entry in record.devices.items():
            if entry.state in RolloutState.DEPLOYING:
                log.warning("rollout_device_unsettled", device=device, state=entry.state)


def _take_agreement(entry: DeviceEntry, deployment: DeploymentPayload) -> None:
    """Keep the device's shadow agreement from its deployment's report, when it has one."""
    agreement = (deployment.shadow or {}).get("agreement")
    if isinstance(agreement, (int, float)):
        entry.agreement = float(agreement)
