"""The deployment state machine: fetch, verify, load, warm, validate, swap, watch, commit or roll back.

    received -> downloading -> verifying -> (building) -> loading -> warming ->
    validating -> [shadow] -> active -> committed     or  failed / rolled_back / discarded

All heavy work runs on one dedicated loader thread at a low CPU priority, so the
serving engine keeps its frame rate while the new one is prepared beside it. The
swap is ``slot.swap()``: a reference switch between two frames. The old engine is
closed after its last frame. During probation the new model's errors,
non-finite outputs and latency are compared with the old model's, and what it
outputs with the old model's outputs and its reference (agent.models.behaviour);
past the bounds it swaps back by itself. A shadow deploy (``DeployRequest.shadow``) holds the
warmed candidate beside the serving model instead of swapping: the frame worker's shadow
observer (agent.vision.shadow) has it infer sampled frames on the loader thread
(``run_beside``), the gate (agent.models.shadow) compares, and the run ends promoted (the
swap and probation as above) or discarded, with its report. A shadow deploy of a second stage
(a recognizer) reads the serving detector's boxes beside the serving recognizer on the same
crops, and is judged on how far the texts agree.

Each deployment, probation and rollback acts on one target (agent.models.target): the first
stage's slot, or the slot of a second stage a camera names (``second_stages``), chosen by the
model name the command carries. One runs at a time, whichever the target: a deploy of one
stage commits the other's probation early.

This module holds the manager itself: the lock, the status it publishes, the targets, the
swap, what follows probation's verdict, and the rollbacks. Its parts live beside it: what a
deployment is (the request, the status, ``DeployFailed``) in agent.models.deployment, the
steps up to ``validating`` in agent.models.candidate, the shadow run in
agent.models.shadow_run, and probation's verdict over time in agent.models.probation_watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog

from agent.models.behaviour import BehaviourBounds, OutputWindow
from agent.models.candidate import Preparer, check_goldens, fitting_feeds, warm_up, warmup_feeds
from agent.models.deployment import (
    DeployFailed,
    DeploymentStatus,
    DeployRequest,
    Event,
    Report,
    SecondStageTargets,
)
from agent.models.fetch import redact_url
from agent.models.loader import EngineOptions, load_serving
from agent.models.priority import restore_thread_priority
from agent.models.probation import Probation
from agent.models.probation_watch import Probe, behaviour_probe, watch
from agent.models.shadow import ShadowSpec
from agent.models.shadow_run import ShadowRun
from agent.models.store import ModelStore, StoreError
from agent.models.target import DeployTarget, FeedsFor, Stats, Swapped
from agent.runtime import EngineError, EngineSlot, Serving
from agent.wire import DeploymentState, DeploymentStep

__all__ = ["DeployFailed", "DeployRequest", "DeploymentManager", "DeploymentStatus", "SecondStageTargets"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _check_second_shadow(spec: ShadowSpec, target: DeployTarget) -> None:
    """A shadow deploy of second stage ``target`` can be judged: a version of it serves (the candidate
    reads beside it; ``no_model``), and its text bound gates (a recognizer's run is judged on what it
    reads alone: at 0 it would promote whatever it read; ``invalid_shadow``)."""
    if target.slot.serving is None:
        raise DeployFailed(DeploymentStep.RECEIVED, "no_model",
                           f"nothing serves the second stage {target.name} for a candidate to be compared with; "
                           "deploy it with mode swap")
    if spec.min_text_agreement <= 0.0:
        raise DeployFailed(DeploymentStep.RECEIVED, "invalid_shadow",
                           f"a shadow run of a {target.role} ({target.name}) is judged on its text agreement "
                           "alone: min_text_agreement must be more than 0")


class DeploymentManager:
    """Runs deployments and rollbacks, one at a time, and hands each new engine to the slot.

    Given the model store, the engine slot, the engine options and ``[deploy]`` settings, the
    key that signs deploy statements, and callables from the agent: ``feeds_for`` (inputs from
    a live frame, to warm a model up), ``stats`` (a version's frame counters, for probation),
    ``report`` (publish a deployment's state) and ``swapped`` (a new engine serves). It owns
    the deployment lock, the current ``DeploymentStatus``, the candidate's preparation (with the
    download in flight) and one low-priority ``model-loader`` thread for staging, loading,
    warming and validation, so the serving engine keeps its frame rate; downloads run in their
    own thread. After a swap a probation task watches the new model and swaps back by itself
    past its bounds; ``close`` cancels it, aborts the download and stops the loader. It owns the
    shadow run, whose gate (``shadow``) the frame worker's shadow observer reads, and ``event``
    (optional) tells how a shadow run ended.

    The slot and callables given are the first stage's target (``first``); ``second_stages``
    (optional) gives the second stages' by model name. ``target`` is the deployment's in progress
    (or the last one's): ``slot``, ``options``, ``load_options`` and ``feeds_for`` are its.
    """

    def __init__(
        self,
        *,
        store: ModelStore,
        slot: EngineSlot,
        options: EngineOptions,
        settings: Any,
        public_key: Any,
        feeds_for: FeedsFor,
        stats: Stats,
        report: Report,
        swapped: Swapped,
        outputs: OutputWindow | None = None,
        event: Event | None = None,
        second_stages: SecondStageTargets | None = None,
    ) -> None:
        self.store = store
        self.first = DeployTarget(name=None, role="first stage", slot=slot, options=options, feeds_for=feeds_for,
                                  stats=stats, swapped=swapped, outputs=outputs)
        """The first stage; ``outputs`` are the frames' outputs behavioural probation reads (None: not judged)."""
        self.second_stages = second_stages
        self.target = self.first
        """The target of the deployment in progress, or of the last one."""
        self.settings = settings
        self.public_key = public_key
        self.report = report
        self.event = event
        self.current: DeploymentStatus | None = None
        self._lock = asyncio.Lock()
        self._probation: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._preparer = Preparer(store=store, settings=settings, public_key=public_key, in_loader=self._in_loader,
                                  step=self._step)
        self._shadow_run = ShadowRun(store=store, in_loader=self._in_loader, step=self._step, publish=self._publish,
                                     event=event)
        self.shadow = self._shadow_run.gate
        """The shadow run in progress, if any (agent.vision.shadow reads it on the frame worker)."""

    @property
    def slot(self) -> EngineSlot:
        """The slot of the deployment in progress (``target``)."""
        return self.target.slot

    @property
    def options(self) -> EngineOptions:
        return self.target.options

    @property
    def load_options(self) -> EngineOptions:
        """``options`` at ``[deploy] load_nice``: how the loader thread loads a new engine."""
        return self._load_options(self.target)

    def _load_options(self, target: DeployTarget) -> EngineOptions:
        return replace(target.options, load_nice=self.settings.load_nice, load_idle=self.settings.load_idle,
                       prepare_graph=self.settings.prepare_graph and target is self.first
                       and target.options.runtime == "onnxruntime")

    def feeds_for(self, new: Serving) -> dict[str, np.ndarray]:
        """Inputs from live data to warm ``new`` up, once it fits its target (``target``)."""
        return fitting_feeds(self.target, new)

    def target_of(self, name: str | None) -> DeployTarget:
        """The target a command for model ``name`` acts on (None: the first stage); ``wrong_model``
        when it is neither the first stage nor a second stage a camera names."""
        first = self.first.model_name()
        if name is None or name == first:
            return self.first
        seconds = self.second_stages() if self.second_stages is not None else {}
        if name in seconds:
            return seconds[name]
        named = f"; second stages the cameras name: {', '.join(sorted(seconds))}" if seconds else \
            "; no camera names a second stage"
        raise DeployFailed(DeploymentStep.RECEIVED, "wrong_model",
                           f"this agent's first stage is {first!r}{named}; {name!r} is none of them")

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def default_probation(self) -> Probation:
        s = self.settings
        return Probation(s.probation_s, s.max_error_rate, s.max_nonfinite, s.max_latency_ratio,
                         s.min_probation_frames, BehaviourBounds.from_settings(s))

    async def _step(self, req: DeployRequest, step: DeploymentStep, progress: float, **detail: Any) -> None:
        await self._publish(DeploymentStatus(req.deployment_id, req.name, req.version, step.state, step, progress,
                                             detail=detail or None, shadow=self.shadow_report(req.deployment_id)))

    async def _publish(self, status: DeploymentStatus) -> None:
        """``status`` is the current one, and is reported."""
        self.current = status
        await self.report(status)

    def shadow_report(self, deployment_id: str) -> dict[str, Any] | None:
        """The shadow report of deployment ``deployment_id`` (live while it runs), None if it had none."""
        return self._shadow_run.report(deployment_id)

    async def _in_loader(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def run_beside(self, job: Callable[[], None]) -> None:
        """Queue ``job`` on the loader thread, beside the serving model (a shadow candidate's frame)."""
        self._executor.submit(job)

    @staticmethod
    def check_goldens(new: Serving) -> None:
        """The bundle's golden inputs give its golden outputs on ``new`` (agent.models.candidate)."""
        check_goldens(new)

    # ----- deploy ---------------------------------------------------------------------------
    async def deploy(self, req: DeployRequest) -> Serving:
        """Run one deployment to ``active``; raises DeployFailed (old model still serving).

        The target is the stage model ``req.name`` serves; a name no stage serves is refused
        (``wrong_model``), and so is a shadow deploy of a second stage that cannot be judged
        (``_check_second_shadow``), before anything is published."""
        target = self.target_of(req.name)
        if req.shadow is not None and target is not self.first:
            _check_second_shadow(req.shadow, target)
        if self._lock.locked():
            raise DeployFailed(DeploymentStep.RECEIVED, "busy",
                               "another deployment or rollback is in progress; retry when it ends")
        async with self._lock:
            await self._cancel_probation(commit=True)
            self.target = target
            await self._step(req, DeploymentStep.RECEIVED, 0.0, url=redact_url(req.url))
            serving = target.slot.serving
            # The old model's figures before anything else loads beside it: the baseline.
            baseline = target.stats(serving.version) if serving is not None else None
            work = Path(tempfile.mkdtemp(prefix=".deploy-", dir=self.store.work_dir()))
            installed_here = req.version not in self.store.versions(req.name)
            try:
                new = await self._prepare_or_fail(req, work, target)
            except DeployFailed as exc:
                await self._publish(DeploymentStatus(req.deployment_id, req.name, req.version,
                                                     DeploymentState.FAILED, exc.step, 0.0,
                                                     {"code": exc.code, "message": exc.message}))
                log.warning("deployment_failed", deployment=req.deployment_id, step=exc.step.value,
                            code=exc.code, error=exc.message)
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if req.shadow is not None:
                await self._shadow_run.run(req, req.shadow, new, installed_here,
                                           stage=None if target is self.first else target.name)
            try:
                old = await self._swap_in(new, req.name, target)
            except BaseException as exc:
                self._shadow_run.settle(exc)
                raise
            self._shadow_run.settle(new)
            await self._step(req, DeploymentStep.ACTIVE, 1.0)
            probation = req.probation or self.default_probation()
            probe = behaviour_probe(probation, new, old, target)
            self._probation = asyncio.create_task(self._watch(req, new, baseline, probation, probe, target))
            return new

    async def promote(self) -> Serving:
        """A ``promote`` command: the waiting shadow run's candidate serves (returns once it does).

        ``no_shadow``: no shadow run in progress; ``not_ready``: its bound is not met (yet)."""
        return await self._shadow_run.promote()

    async def _prepare_or_fail(self, req: DeployRequest, work: Path, target: DeployTarget) -> Serving:
        """The candidate (agent.models.candidate), with an unexpected error turned into a failure at
        the step it reached: a deployment always ends ``failed`` with a code, never stuck at a step."""
        try:
            return await self._preparer.prepare(req, work, target, self._load_options(target))
        except DeployFailed:
            raise
        except Exception as exc:
            step = self.current.step if self.current is not None else DeploymentStep.RECEIVED
            log.exception("deployment_error", deployment=req.deployment_id, step=step.value)
            raise DeployFailed(step, "internal_error", f"{type(exc).__name__}: {exc}") from exc

    async def _swap_in(self, new: Serving, name: str, target: DeployTarget) -> Serving | None:
        old = target.slot.swap(new)
        await self._in_loader(restore_thread_priority)
        self.store.activate(name, new.version, explicit=True)  # a deploy lifts a quarantine
        await target.swapped(new, old, "deploy")
        log.info("engine_swapped", model=name, stage=target.role, from_version=old.version if old else None,
                 to_version=new.version)
        return old

    # ----- probation and rollback -----------------------------------------------------------
    async def _watch(self, req: DeployRequest, new: Serving, baseline: dict[str, Any] | None,
                     probation: Probation, probe: Probe | None, target: DeployTarget) -> None:
        """Probation (agent.models.probation_watch): commit on a pass; on a failure, swap back."""
        verdict = await watch(probation, target, new, baseline, probe)
        if verdict.ok:
            verdict.detail.setdefault("frames", target.stats(new.version)["frames"])
            await self._step(req, DeploymentStep.COMMITTED, 1.0, **verdict.detail)
            log.info("deployment_committed", deployment=req.deployment_id, version=new.version)
            return
        async with self._lock:
            log.warning("probation_failed", deployment=req.deployment_id, reason=verdict.reason)
            try:
                await self._rollback_to_previous(target, req.name, f"probation: {verdict.reason}")
            except DeployFailed as exc:
                log.error("rollback_failed", error=exc.message)
            await self._publish(DeploymentStatus(req.deployment_id, req.name, req.version,
                                                 DeploymentState.ROLLED_BACK, DeploymentStep.ACTIVE, 1.0,
                                                 {"code": "probation_failed", "message": verdict.reason},
                                                 verdict.detail))

    async def _cancel_probation(self, commit: bool) -> None:
        task, self._probation = self._probation, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if commit and self.current is not None and self.current.state == DeploymentState.ACTIVE:
                await self._publish(replace(self.current, state=DeploymentState.COMMITTED,
                                            step=DeploymentStep.COMMITTED,
                                            detail={"note": "committed early by a newer command"}))

    async def rollback(self, reason: str, name: str | None = None) -> Serving:
        """Swap model ``name`` (None: the first stage) back to the store's ``previous`` version (by command).

        The probation of that model's deployment ends rolled back; one of the other stage is committed early."""
        target = self.target_of(name)
        if self._lock.locked():
            raise DeployFailed(DeploymentStep.RECEIVED, "busy",
                               "a deployment or rollback is in progress; retry when it ends")
        async with self._lock:
            model = target.model_name()
            if model is None:
                raise DeployFailed(DeploymentStep.RECEIVED, "no_model", "nothing is serving")
            same = self.current is not None and self.current.name == model
            await self._cancel_probation(commit=not same)
            serving = await self._rollback_to_previous(target, model, reason)
            if same and self.current is not None and self.current.state == DeploymentState.ACTIVE:
                await self._publish(replace(self.current, state=DeploymentState.ROLLED_BACK,
                                            error={"code": "rolled_back_by_command", "message": reason}))
            return serving

    async def _rollback_to_previous(self, target: DeployTarget, name: str, reason: str) -> Serving:
        try:
            previous = self.store.previous(name)
        except StoreError as exc:
            raise DeployFailed(DeploymentStep.LOADING, "no_previous", str(exc)) from exc
        try:
            restored = await self._in_loader(load_serving, previous, self._load_options(target))
            feeds, _ = warmup_feeds(target, restored, self.settings.warmup_scale)
            await self._in_loader(warm_up, restored, feeds, 1, self.settings.load_nice, self.settings.load_idle)
        except (EngineError, DeployFailed, ValueError) as exc:
            raise DeployFailed(DeploymentStep.LOADING, "rollback_load_failed", str(exc)) from exc
        old = target.slot.swap(restored)
        await self._in_loader(restore_thread_priority)
        self.store.activate(name, restored.version)
        await target.swapped(restored, old, reason)
        log.warning("rolled_back", model=name, stage=target.role, from_version=old.version if old else None,
                    to_version=restored.version, reason=reason)
        return restored

    async def serve_current(self, name: str) -> Serving | None:
        """Load second stage ``name``'s current version into its empty slot (a camera added at run time
        names it); None when it serves already. ``load_failed`` when it cannot be loaded (not installed,
        quarantined, unloadable); ``does_not_fit_head`` when it is no recognizer."""
        target = self.target_of(name)
        async with self._lock:
            if target.role != "second stage" or target.slot.serving is not None:
                return None
            try:
                installed = self.store.current(name)
                new = await self._in_loader(load_serving, installed, self._load_options(target))
            except (StoreError, EngineError, ValueError, OSError) as exc:
                raise DeployFailed(DeploymentStep.LOADING, "load_failed", str(exc)) from exc
            try:
                feeds, _ = warmup_feeds(target, new, self.settings.warmup_scale)
                await self._in_loader(warm_up, new, feeds, 1, self.settings.load_nice, self.settings.load_idle)
            except BaseException:
                new.engine.close()
                raise
            old = target.slot.swap(new)
            await self._in_loader(restore_thread_priority)
            await target.swapped(new, old, "a camera names it")
            return new

    def close(self) -> None:
        if self._probation is not None:
            self._probation.cancel()
        self._preparer.abort()
        self._executor.shutdown(wait=False, cancel_futures=True)

