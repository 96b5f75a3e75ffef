"""A shadow deploy's run, between validation and the swap: the candidate judged beside the serving model.

The deployment manager (agent.models.manager) hands a validated candidate to ``ShadowRun.run``
instead of swapping it in at once. The run starts the gate (``gate``, agent.models.shadow), which
the frame worker's shadow observer (agent.vision.shadow) reads to have the candidate infer
sampled frames on the manager's loader thread; every SHADOW_POLL_S the run is decided and its
deployment's ``shadow`` state republished with the live report. It returns when the candidate is
to be promoted (by itself at the bound, or by a ``promote`` command once the bound is met): the
manager then swaps and tells ``settle``, which answers the waiting ``promote``. Otherwise it
closes the candidate, removes the version it installed, tells how it ended (``shadow_discarded``)
and raises ``DeployFailed``: the deployment ends ``discarded``, the candidate never served. The
last run's report is kept for its deployment's later states (``report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from agent.models.deployment import DeployFailed, DeploymentStatus, DeployRequest, Event, InLoader, Report, StepReport
from agent.models.shadow import ShadowDecision, ShadowGate, ShadowSpec
from agent.models.store import ModelStore
from agent.runtime import Serving
from agent.wire import DeploymentState, DeploymentStep, Severity

__all__ = ["SHADOW_POLL_S", "SHADOW_PROGRESS", "ShadowRun"]

log = structlog.get_logger(__name__)

SHADOW_POLL_S = 1.0
"""How often a shadow run is decided and its report republished: a retained message a second at most."""
SHADOW_PROGRESS = 0.9
"""The deployment's progress while in shadow (loaded, warmed and validated; not serving)."""


class ShadowRun:
    """The shadow runs of one manager, one at a time: the gate, the promote in waiting, the last report.

    Given the model store (a discarded candidate's version is removed), the manager's loader
    thread (``in_loader``), its step report (``step``), ``publish`` (the manager's status becomes
    the one given, and is reported) and ``event`` (optional: tells how a run ended)."""

    def __init__(self, *, store: ModelStore, in_loader: InLoader, step: StepReport, publish: Report,
                 event: Event | None) -> None:
        self.store = store
        self._in_loader = in_loader
        self._step = step
        self._publish = publish
        self._event = event
        self.gate = ShadowGate()
        """The shadow run in progress, if any (agent.vision.shadow reads it on the frame worker)."""
        self._running: str | None = None
        """The deployment id of the run in progress."""
        self._kept: tuple[str, dict[str, Any]] | None = None
        """The last run's deployment id and report, carried on its deployment's later states."""
        self._promote: asyncio.Event | None = None
        self._promoted: asyncio.Future[Serving] | None = None

    def report(self, deployment_id: str) -> dict[str, Any] | None:
        """The shadow report of deployment ``deployment_id`` (live while it runs), None if it had none."""
        if self.gate.running and self._running == deployment_id:
            return self.gate.report()
        kept = self._kept
        return kept[1] if kept is not None and kept[0] == deployment_id else None

    async def run(self, req: DeployRequest, spec: ShadowSpec, new: Serving, installed_here: bool,
                  stage: str | None = None) -> None:
        """Run the candidate in shadow until it is promoted (returns) or discarded (raises DeployFailed:
        the candidate is closed, never served, and the deployment ends ``discarded``). ``stage``: the
        second stage the candidate is a version of (None: the first stage)."""
        loop = asyncio.get_running_loop()
        self._promote, self._promoted = asyncio.Event(), loop.create_future()
        self.gate.start(new.version, spec, new, stage=stage)
        self._running = req.deployment_id
        log.info("shadow_started", deployment=req.deployment_id, model=req.name, version=new.version,
                 stage="first" if stage is None else "second", every_nth=spec.every_nth,
                 min_agreement=spec.min_agreement, min_text_agreement=spec.min_text_agreement,
                 min_frames=spec.min_frames)
        try:
            reason = await self._decide(req)
        except BaseException:
            self.settle(DeployFailed(DeploymentStep.SHADOW, "cancelled", "the shadow run was stopped"))
            raise
        finally:
            report = self.gate.finish()
            self._running = None
            self._kept = (req.deployment_id, report)
            with contextlib.suppress(RuntimeError):  # the loader is shut down when the agent stops
                await self._in_loader(lambda: None)  # one loader thread: every comparison queued before is done
        if reason is None:
            log.info("shadow_promoted", deployment=req.deployment_id, version=new.version,
                     agreement=report["agreement"], frames=report["frames"])
            await self._tell("shadow_promoted", "info", f"{req.name} {req.version} agreed in shadow: "
                             f"promoted", req, report, stage)
            return
        self.settle(DeployFailed(DeploymentStep.SHADOW, "shadow_discarded", reason))
        await self._in_loader(new.engine.close)
        if installed_here:
            self.store.remove(req.name, req.version)
        log.warning("shadow_discarded", deployment=req.deployment_id, version=new.version, reason=reason)
        await self._tell("shadow_discarded", "warning", f"{req.name} {req.version} discarded in shadow: "
                         f"{reason}", req, report, stage)
        await self._publish(DeploymentStatus(req.deployment_id, req.name, req.version, DeploymentState.DISCARDED,
                                             DeploymentStep.SHADOW, SHADOW_PROGRESS,
                                             {"code": "shadow_discarded", "message": reason}, shadow=report))
        raise DeployFailed(DeploymentStep.SHADOW, "shadow_discarded", reason)

    async def _decide(self, req: DeployRequest) -> str | None:
        """Decide every SHADOW_POLL_S until the run ends: None (promote) or the reason it is discarded."""
        assert self._promote is not None
        started = time.monotonic()
        while True:
            ended = time.monotonic() - started >= req.shadow_duration_s
            decision, reason = self.gate.decide(ended=ended)
            if decision is ShadowDecision.PROMOTE or (decision is ShadowDecision.READY and self._promote.is_set()):
                return None
            if decision is ShadowDecision.DISCARD:
                return reason
            if ended:  # READY, and no promote came
                return (f"the bound was met but no promote command came within the shadow's "
                        f"{req.shadow_duration_s:g} s")
            await self._step(req, DeploymentStep.SHADOW, SHADOW_PROGRESS, decision=decision.value)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._promote.wait(), SHADOW_POLL_S)

    async def _tell(self, kind: str, severity: Severity, message: str, req: DeployRequest,
                    report: dict[str, Any], stage: str | None) -> None:
        """The event of how the run ended, with its model and stage (as ``engine_swapped`` names them)."""
        if self._event is not None:
            await self._event(kind, severity, message, {
                "deployment_id": req.deployment_id, "model": req.name, "version": req.version,
                "stage": "first" if stage is None else "second", "shadow": report})

    def settle(self, outcome: Serving | BaseException) -> None:
        """The promote in waiting, if any, learns how the run ended: the candidate serves, or the error."""
        future, self._promote, self._promoted = self._promoted, None, None
        if future is not None and not future.done():
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
                future.exception()  # read here: with no promote waiting, asyncio must not log it as lost
            else:
                future.set_result(outcome)

    async def promote(self) -> Serving:
        """A ``promote`` command: the waiting shadow run's candidate serves (returns once it does).

        ``no_shadow``: no shadow run in progress; ``not_ready``: its bound is not met (yet)."""
        promote, promoted = self._promote, self._promoted
        if promote is None or promoted is None or not self.gate.running:
            raise DeployFailed(DeploymentStep.RECEIVED, "no_shadow", "no shadow run is in progress")
        decision, reason = self.gate.decide()
        if decision is not ShadowDecision.READY:
            detail = f" ({reason})" if reason else ""
            raise DeployFailed(DeploymentStep.SHADOW, "not_ready",
                               f"the shadow run cannot be promoted: {decision.value}{detail}")
        promote.set()
        return await asyncio.shield(promoted)
