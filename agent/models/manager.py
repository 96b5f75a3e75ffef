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
swap and probation as above) or discarded, with its report.

Each deployment, probation and rollback acts on one target (agent.models.target): the first
stage's slot, or the slot of a second stage a camera names (``second_stages``), chosen by the
model name the command carries. One runs at a time, whichever the target: a deploy of one
stage commits the other's probation early.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog

from agent.core import AgentError, CodedError
from agent.models.behaviour import BehaviourBounds, BehaviourProbe, OutputWindow
from agent.models.bundle import BundleError, stage_bare_model, unpack_bundle
from agent.models.errors import ModelError
from agent.models.fetch import (
    DownloadAbort,
    Fetched,
    FetchError,
    download,
    redact_url,
    verify_artifact,
    verify_statement,
)
from agent.models.graph import check_fits_head, check_fits_input
from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import ManifestError
from agent.models.priority import lowered_priority, restore_thread_priority
from agent.models.probation import Probation, ProbationVerdict, judge
from agent.models.shadow import ShadowDecision, ShadowGate, ShadowSpec
from agent.models.store import ModelStore, StoreError
from agent.models.target import DeployTarget, FeedsFor, Stats, Swapped
from agent.runtime import EngineError, EngineSlot, Serving
from agent.wire import DeploymentState, DeploymentStep, Severity

__all__ = ["DeployFailed", "DeployRequest", "DeploymentManager", "DeploymentStatus", "SecondStageTargets"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

PROBATION_POLL_S = 0.5
PROBATION_GIVE_UP = 3.0
"""Commit (with a note) when the window has passed this many times over without enough frames."""
SHADOW_POLL_S = 1.0
"""How often a shadow run is decided and its report republished: a retained message a second at most."""
SHADOW_PROGRESS = 0.9
"""The deployment's progress while in shadow (loaded, warmed and validated; not serving)."""


class DeployFailed(ModelError, CodedError):
    """A deployment step failed; the old model keeps serving. ``code`` and ``message`` are the deployment's error."""

    def __init__(self, step: DeploymentStep, code: str, message: str) -> None:
        super().__init__(code, message)
        self.step = step

    def __str__(self) -> str:
        return f"{self.step.value}: {self.message}"


@dataclass(frozen=True)
class DeployRequest:
    name: str
    version: str
    url: str
    sha256: str
    signature: str | None = None
    format: str = "onnx"
    probation: Probation | None = None
    deployment_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    statement: Mapping[str, Any] | None = None
    """The signed statement (agent.models.fetch.Statement and its signature) the deploy carries."""
    shadow: ShadowSpec | None = None
    """A shadow deploy's terms: judged beside the serving model before it serves; None: swap at once."""
    shadow_duration_s: float = 0.0
    """The longest the shadow run lasts."""


@dataclass(frozen=True)
class DeploymentStatus:
    deployment_id: str
    name: str
    version: str
    state: DeploymentState
    step: DeploymentStep
    progress: float
    error: dict[str, str] | None = None
    detail: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    """The deployment's shadow report, once it has one."""


Report = Callable[[DeploymentStatus], Awaitable[None]]
Event = Callable[[str, Severity, str, dict[str, Any]], Awaitable[None]]
SecondStageTargets = Callable[[], Mapping[str, DeployTarget]]
"""The second stages the cameras name now, by model name (agent.results.stages builds each)."""


class DeploymentManager:
    """Runs deployments and rollbacks, one at a time, and hands each new engine to the slot.

    Given the model store, the engine slot, the engine options and ``[deploy]`` settings, the
    key that signs deploy statements, and callables from the agent: ``feeds_for`` (inputs from
    a live frame, to warm a model up), ``stats`` (a version's frame counters, for probation),
    ``report`` (publish a deployment's state) and ``swapped`` (a new engine serves). It owns
    the deployment lock, the current ``DeploymentStatus``, the download in flight and one
    low-priority ``model-loader`` thread for staging, loading, warming and validation, so the
    serving engine keeps its frame rate; downloads run in their own thread. After a swap a
    probation task watches the new model and swaps back by itself past its bounds; ``close``
    cancels it, aborts the download and stops the loader. It owns the shadow gate (``shadow``)
    the frame worker's shadow observer reads, and ``event`` (optional) tells how a shadow run ended.

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
                                  stats=stats, swapped=swapped, outputs=outputs, shadow=True)
        """The first stage; ``outputs`` are the frames' outputs behavioural probation reads (None: not judged)."""
        self.second_stages = second_stages
        self.target = self.first
        """The target of the deployment in progress, or of the last one."""
        self.settings = settings
        self.public_key = public_key
        self.report = report
        self.event = event
        self.shadow = ShadowGate()
        """The shadow run in progress, if any (agent.vision.shadow reads it on the frame worker)."""
        self._shadow_report: tuple[str, dict[str, Any]] | None = None
        """The last shadow run's deployment id and report, carried on its deployment's later states."""
        self._promote: asyncio.Event | None = None
        self._promoted: asyncio.Future[Serving] | None = None
        self.current: DeploymentStatus | None = None
        self._lock = asyncio.Lock()
        self._probation: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._download: DownloadAbort | None = None

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
        return self._feeds(self.target, new)

    def _feeds(self, target: DeployTarget, new: Serving) -> dict[str, np.ndarray]:
        if target.fits is not None:
            try:
                target.fits(new)
            except (AgentError, ValueError) as exc:
                raise DeployFailed(DeploymentStep.VALIDATING, "does_not_fit_head",
                                   f"{new.name} {new.version} cannot serve as a {target.role}: {exc}") from exc
        return target.feeds_for(new)

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
        self.current = DeploymentStatus(req.deployment_id, req.name, req.version, step.state, step,
                                        progress, detail=detail or None, shadow=self.shadow_report(req.deployment_id))
        await self.report(self.current)

    def shadow_report(self, deployment_id: str) -> dict[str, Any] | None:
        """The shadow report of deployment ``deployment_id`` (live while it runs), None if it had none."""
        if self.shadow.running and self.current is not None and self.current.deployment_id == deployment_id:
            return self.shadow.report()
        kept = self._shadow_report
        return kept[1] if kept is not None and kept[0] == deployment_id else None

    async def _in_loader(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def run_beside(self, job: Callable[[], None]) -> None:
        """Queue ``job`` on the loader thread, beside the serving model (a shadow candidate's frame)."""
        self._executor.submit(job)

    # ----- deploy ---------------------------------------------------------------------------
    async def deploy(self, req: DeployRequest) -> Serving:
        """Run one deployment to ``active``; raises DeployFailed (old model still serving).

        The target is the stage model ``req.name`` serves; a name no stage serves is refused
        (``wrong_model``), and so is a shadow deploy of a second stage (``unsupported``), before
        anything is published."""
        target = self.target_of(req.name)
        if req.shadow is not None and not target.shadow:
            raise DeployFailed(DeploymentStep.RECEIVED, "unsupported",
                               f"a shadow deploy of a {target.role} ({req.name}) is not supported; deploy it "
                               "with mode swap (validated, then watched in probation)")
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
                new = await self._prepare_or_fail(req, work)
            except DeployFailed as exc:
                self.current = DeploymentStatus(req.deployment_id, req.name, req.version, DeploymentState.FAILED,
                                                exc.step, 0.0, {"code": exc.code, "message": exc.message})
                await self.report(self.current)
                log.warning("deployment_failed", deployment=req.deployment_id, step=exc.step.value,
                            code=exc.code, error=exc.message)
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if req.shadow is not None:
                await self._shadow_or_discard(req, req.shadow, new, installed_here)
            try:
                old = await self._swap_in(new, req.name, target)
            except BaseException as exc:
                self._settle_promote(exc)
                raise
            self._settle_promote(new)
            await self._step(req, DeploymentStep.ACTIVE, 1.0)
            probation = req.probation or self.default_probation()
            probe = self._behaviour_probe(probation, new, old, target)
            self._probation = asyncio.create_task(self._watch(req, new, baseline, probation, probe, target))
            return new

    # ----- shadow ---------------------------------------------------------------------------
    async def _shadow_or_discard(self, req: DeployRequest, spec: ShadowSpec, new: Serving,
                                 installed_here: bool) -> None:
        """Run the candidate in shadow until it is promoted (returns) or discarded (raises DeployFailed:
        the candidate is closed, never served, and the deployment ends ``discarded``)."""
        loop = asyncio.get_running_loop()
        self._promote, self._promoted = asyncio.Event(), loop.create_future()
        self.shadow.start(new.version, spec, new)
        log.info("shadow_started", deployment=req.deployment_id, version=new.version, every_nth=spec.every_nth,
                 min_agreement=spec.min_agreement, min_frames=spec.min_frames)
        try:
            reason = await self._shadow_run(req, spec)
        except BaseException:
            self._settle_promote(DeployFailed(DeploymentStep.SHADOW, "cancelled", "the shadow run was stopped"))
            raise
        finally:
            report = self.shadow.finish()
            self._shadow_report = (req.deployment_id, report)
            with contextlib.suppress(RuntimeError):  # the loader is shut down when the agent stops
                await self._in_loader(lambda: None)  # one loader thread: every comparison queued before is done
        if reason is None:
            log.info("shadow_promoted", deployment=req.deployment_id, version=new.version,
                     agreement=report["agreement"], frames=report["frames"])
            await self._shadow_event("shadow_promoted", "info", f"{req.name} {req.version} agreed in shadow: "
                                     f"promoted", req, report)
            return
        self._settle_promote(DeployFailed(DeploymentStep.SHADOW, "shadow_discarded", reason))
        await self._in_loader(new.engine.close)
        if installed_here:
            self.store.remove(req.name, req.version)
        log.warning("shadow_discarded", deployment=req.deployment_id, version=new.version, reason=reason)
        await self._shadow_event("shadow_discarded", "warning", f"{req.name} {req.version} discarded in shadow: "
                                 f"{reason}", req, report)
        self.current = DeploymentStatus(req.deployment_id, req.name, req.version, DeploymentState.DISCARDED,
                                        DeploymentStep.SHADOW, SHADOW_PROGRESS,
                                        {"code": "shadow_discarded", "message": reason}, shadow=report)
        await self.report(self.current)
        raise DeployFailed(DeploymentStep.SHADOW, "shadow_discarded", reason)

    async def _shadow_run(self, req: DeployRequest, spec: ShadowSpec) -> str | None:
        """Decide every SHADOW_POLL_S until the run ends: None (promote) or the reason it is discarded."""
        assert self._promote is not None
        started = time.monotonic()
        while True:
            ended = time.monotonic() - started >= req.shadow_duration_s
            decision, reason = self.shadow.decide(ended=ended)
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

    async def _shadow_event(self, kind: str, severity: Severity, message: str, req: DeployRequest,
                            report: dict[str, Any]) -> None:
        if self.event is not None:
            await self.event(kind, severity, message, {"deployment_id": req.deployment_id, "version": req.version,
                                                       "shadow": report})

    def _settle_promote(self, outcome: Serving | BaseException) -> None:
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
        if promote is None or promoted is None or not self.shadow.running:
            raise DeployFailed(DeploymentStep.RECEIVED, "no_shadow", "no shadow run is in progress")
        decision, reason = self.shadow.decide()
        if decision is not ShadowDecision.READY:
            detail = f" ({reason})" if reason else ""
            raise DeployFailed(DeploymentStep.SHADOW, "not_ready",
                               f"the shadow run cannot be promoted: {decision.value}{detail}")
        promote.set()
        return await asyncio.shield(promoted)

    async def _prepare_or_fail(self, req: DeployRequest, work: Path) -> Serving:
        """``_prepare``, with an unexpected error turned into a failure at the step it reached:
        a deployment always ends ``failed`` with a code, never stuck at a step."""
        try:
            return await self._prepare(req, work)
        except DeployFailed:
            raise
        except Exception as exc:
            step = self.current.step if self.current is not None else DeploymentStep.RECEIVED
            log.exception("deployment_error", deployment=req.deployment_id, step=step.value)
            raise DeployFailed(step, "internal_error", f"{type(exc).__name__}: {exc}") from exc

    async def _prepare(self, req: DeployRequest, work: Path) -> Serving:
        serving = self.slot.serving
        if serving is not None and serving.name != req.name:
            raise DeployFailed(DeploymentStep.RECEIVED, "wrong_model",
                               f"this agent serves {serving.name!r}; a deploy of {req.name!r} does not fit it")
        if req.version in self.store.versions(req.name) and self.store.current_version(req.name) == req.version:
            raise DeployFailed(DeploymentStep.RECEIVED, "already_serving",
                               f"{req.name} {req.version} is already serving")
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int | None) -> None:
            fraction = done / total if total else 0.0
            asyncio.run_coroutine_threadsafe(
                self._step(req, DeploymentStep.DOWNLOADING, round(0.4 * fraction, 3), bytes=done, total=total), loop)

        self._check_statement(req)
        await self._step(req, DeploymentStep.DOWNLOADING, 0.0)
        fetched = await self._fetch(req, work, progress)
        await self._step(req, DeploymentStep.VERIFYING, 0.45, size=fetched.size)
        try:
            await asyncio.to_thread(verify_artifact, fetched, sha256=req.sha256)
            folder = await self._in_loader(self._stage, req, fetched.path, work)
        except FetchError as exc:
            raise DeployFailed(DeploymentStep.VERIFYING, exc.code, exc.message) from exc
        except BundleError as exc:
            raise DeployFailed(DeploymentStep.VERIFYING, "bad_bundle", str(exc)) from exc
        if self.options.runtime == "tensorrt" and req.format != "engine":
            # The engine is built (or found in the engine cache) inside the load, in a worker process.
            await self._step(req, DeploymentStep.BUILDING, 0.5)
        await self._step(req, DeploymentStep.LOADING, 0.55)
        installed_here = req.version not in self.store.versions(req.name)
        try:
            installed = await self._in_loader(lambda: self.store.install(folder, activate=False))
            new = await self._in_loader(load_serving, installed, self.load_options)
        except (StoreError, EngineError, ValueError, OSError) as exc:
            if installed_here:
                self.store.remove(req.name, req.version)
            code = "disk_full" if getattr(exc, "errno", None) == 28 or "No space" in str(exc) else "load_failed"
            raise DeployFailed(DeploymentStep.LOADING, code, str(exc)) from exc
        try:
            await self._validate(req, new)
        except DeployFailed:
            new.engine.close()
            if installed_here:
                self.store.remove(req.name, req.version)
            raise
        return new

    def _check_statement(self, req: DeployRequest) -> None:
        """With a key, the deploy's signed statement must name what it asks for, before any download."""
        if self.public_key is None:
            return
        if req.statement is None:
            hint = (" (a signature over the artifact's bytes alone is no longer accepted)" if req.signature else "")
            raise DeployFailed(DeploymentStep.RECEIVED, "signature_missing",
                               "this agent requires a signed statement (name, version, format, sha256, expiry) "
                               f"and the deploy carries none{hint}")
        try:
            verify_statement(self.public_key, req.statement, name=req.name, version=req.version,
                             format=req.format, sha256=req.sha256)
        except FetchError as exc:
            raise DeployFailed(DeploymentStep.RECEIVED, exc.code, exc.message) from exc

    async def _fetch(self, req: DeployRequest, work: Path, progress: Callable[[int, int | None], None]) -> Fetched:
        """The download, bounded by ``download_timeout_s`` and stopped at once by ``close()``."""
        s = self.settings
        self._download = abort = DownloadAbort()
        try:
            return await download(req.url, abort=abort, dest_dir=work, max_bytes=int(s.max_artifact_mb * 1024 * 1024),
                                  allowed_schemes=tuple(s.allowed_schemes), file_roots=tuple(s.file_roots),
                                  deadline_s=s.download_timeout_s, progress=progress)
        except FetchError as exc:
            raise DeployFailed(DeploymentStep.DOWNLOADING, exc.code, exc.message) from exc
        finally:
            self._download = None

    def _stage(self, req: DeployRequest, artifact: Path, work: Path) -> Path:
        folder = work / "model"
        if req.format == "bundle":
            manifest = unpack_bundle(artifact, folder)
            if (manifest.name, manifest.version) != (req.name, req.version):
                raise BundleError(
                    f"bundle holds {manifest.name} {manifest.version}, the deploy said {req.name} {req.version}")
            return folder
        serving = self.slot.serving
        if serving is None:
            raise BundleError("a bare model needs a serving model's manifest to inherit; deploy a bundle")
        stage_bare_model(artifact, folder, serving.manifest, req.name, req.version, serving.folder)
        return folder

    async def _validate(self, req: DeployRequest, new: Serving) -> None:
        try:  # the monitors' data, parsed now and kept on the manifest: the swap only assigns it
            await self._in_loader(new.manifest.monitor_data)
        except ManifestError as exc:
            raise DeployFailed(DeploymentStep.VALIDATING, "bad_bundle", str(exc)) from exc
        try:
            check_fits_input(new.manifest.preprocess, new.engine.inputs)
            check_fits_head(new.engine.outputs, new.manifest.head)
        except ValueError as exc:
            raise DeployFailed(DeploymentStep.VALIDATING, "does_not_fit_head", str(exc)) from exc
        await self._step(req, DeploymentStep.WARMING, 0.7)
        try:
            feeds = self.feeds_for(new)
            timings = await self._in_loader(self._warm, new, feeds, self.settings.warmup_runs, self.settings.load_nice,
                                            self.settings.load_idle)
        except DeployFailed:
            raise
        except Exception as exc:  # the new engine failed on a real frame
            raise DeployFailed(DeploymentStep.WARMING, "inference_failed", f"{type(exc).__name__}: {exc}") from exc
        await self._step(req, DeploymentStep.VALIDATING, 0.85, warm_ms=round(float(np.median(timings)), 2))
        warm = float(np.median(timings[1:] if len(timings) > 1 else timings))
        if warm > self.settings.latency_budget_ms:
            raise DeployFailed(DeploymentStep.VALIDATING, "over_latency_budget",
                               f"warm inference takes {warm:.1f} ms, "
                               f"the budget is {self.settings.latency_budget_ms:.1f} ms")
        try:
            await self._in_loader(self.check_goldens, new)
        except DeployFailed:
            raise
        except Exception as exc:
            raise DeployFailed(DeploymentStep.VALIDATING, "golden_failed", f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _warm(new: Serving, feeds: dict[str, np.ndarray], runs: int, nice: int | None,
              idle: bool = False) -> list[float]:
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            with lowered_priority(nice, idle):
                outputs = new.engine.infer(feeds)
            timings.append((time.perf_counter() - start) * 1000.0)
            for name, value in outputs.items():
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise DeployFailed(DeploymentStep.WARMING, "non_finite_output",
                                       f"output {name!r} holds NaN or infinity on a real frame")
        return timings

    @staticmethod
    def check_goldens(new: Serving) -> None:
        manifest = new.manifest
        folder = new.folder
        for golden in manifest.golden:
            inputs = np.load(folder / golden.input_file)
            expected = np.load(folder / golden.output_file)
            name = manifest.preprocess.input_name or new.engine.inputs[0].name
            if inputs.dtype != new.engine.inputs[0].dtype:
                continue  # a float tensor is for the unfused graph, a uint8 frame for a fused one
            outputs = new.engine.infer({name: inputs})
            head_output = manifest.head.output_name
            output = outputs[head_output] if head_output else next(iter(outputs.values()))
            if not np.isfinite(output).all():
                raise DeployFailed(DeploymentStep.VALIDATING, "non_finite_output",
                                   f"golden input {golden.input_file} gives NaN/inf")
            if output.shape != expected.shape or not np.allclose(output, expected, rtol=golden.rtol, atol=golden.atol):
                raise DeployFailed(DeploymentStep.VALIDATING, "golden_mismatch",
                                   f"output for {golden.input_file} differs from {golden.output_file}")

    async def _swap_in(self, new: Serving, name: str, target: DeployTarget) -> Serving | None:
        old = target.slot.swap(new)
        await self._in_loader(restore_thread_priority)
        self.store.activate(name, new.version, explicit=True)  # a deploy lifts a quarantine
        await target.swapped(new, old, "deploy")
        log.info("engine_swapped", model=name, stage=target.role, from_version=old.version if old else None,
                 to_version=new.version)
        return old

    # ----- probation and rollback -----------------------------------------------------------
    def _behaviour_probe(self, probation: Probation, new: Serving, old: Serving | None,
                         target: DeployTarget) -> BehaviourProbe | None:
        """The old model's outputs just before the swap, to judge the new one's against (with its reference)."""
        if target.outputs is None or probation.behaviour is None:
            return None
        try:
            reference = new.manifest.monitor_data().reference
        except ManifestError:  # validated before the swap; a model without data is judged on the old one only
            reference = None
        return BehaviourProbe(target.outputs, probation.behaviour, new.version, old.version if old else None,
                              reference)

    async def _watch(self, req: DeployRequest, new: Serving, baseline: dict[str, Any] | None,
                     probation: Probation, probe: BehaviourProbe | None, target: DeployTarget) -> None:
        started = time.monotonic()
        verdict = ProbationVerdict(ok=True, reason="")
        while True:
            await asyncio.sleep(PROBATION_POLL_S)
            elapsed = time.monotonic() - started
            verdict = judge(probation, target.stats(new.version), baseline, final=elapsed >= probation.window_s)
            if probe is not None and verdict.ok:
                verdict = _with_behaviour(verdict, probe)
            if not verdict.ok or (elapsed >= probation.window_s and verdict.final):
                break
            if elapsed >= PROBATION_GIVE_UP * max(probation.window_s, PROBATION_POLL_S):
                verdict = ProbationVerdict(ok=True, reason="", detail={"note": "too few frames to judge"})
                break
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
            self.current = DeploymentStatus(req.deployment_id, req.name, req.version,
                                            DeploymentState.ROLLED_BACK, DeploymentStep.ACTIVE, 1.0,
                                            {"code": "probation_failed", "message": verdict.reason}, verdict.detail)
            await self.report(self.current)

    async def _cancel_probation(self, commit: bool) -> None:
        task, self._probation = self._probation, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if commit and self.current is not None and self.current.state == DeploymentState.ACTIVE:
                self.current = replace(self.current, state=DeploymentState.COMMITTED, step=DeploymentStep.COMMITTED,
                                       detail={"note": "committed early by a newer command"})
                await self.report(self.current)

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
                self.current = replace(self.current, state=DeploymentState.ROLLED_BACK,
                                       error={"code": "rolled_back_by_command", "message": reason})
                await self.report(self.current)
            return serving

    async def _rollback_to_previous(self, target: DeployTarget, name: str, reason: str) -> Serving:
        try:
            previous = self.store.previous(name)
        except StoreError as exc:
            raise DeployFailed(DeploymentStep.LOADING, "no_previous", str(exc)) from exc
        try:
            restored = await self._in_loader(load_serving, previous, self._load_options(target))
            feeds = self._feeds(target, restored)
            await self._in_loader(self._warm, restored, feeds, 1, self.settings.load_nice, self.settings.load_idle)
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
                feeds = self._feeds(target, new)
                await self._in_loader(self._warm, new, feeds, 1, self.settings.load_nice, self.settings.load_idle)
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
        if self._download is not None:
            self._download.fire(FetchError("cancelled", "the agent is stopping"))
        self._executor.shutdown(wait=False, cancel_futures=True)



def _with_behaviour(verdict: ProbationVerdict, probe: BehaviourProbe) -> ProbationVerdict:
    """A passing health verdict with the behavioural one: that failure fails probation; a pass is
    final only once there are enough frames to judge what the new model sees."""
    seen = probe.judge()
    detail = {**verdict.detail, "behaviour": seen.detail}
    if not seen.ok:
        return ProbationVerdict(False, f"behaviour: {seen.reason}", True, detail)
    return ProbationVerdict(True, "", verdict.final and seen.final, detail)
