"""A deploy's candidate, from the request to an engine that may serve, the steps before the swap.

    received -> downloading -> verifying -> (building) -> loading -> warming -> validating

The deployment manager (agent.models.manager) holds the lock and the status, and hands each
deployment's request, target and load options to ``Preparer.prepare``. The statement is checked
before any download; the artifact is downloaded (bounded, and aborted at once by ``abort``),
verified and staged as a model folder (a bundle unpacked, or a bare model given the serving
model's manifest), installed in the store without activating it, loaded, checked against its
preprocessing and head, warmed on a live frame within the latency budget and matched against
its goldens. What ``prepare`` returns may serve; a failure is ``DeployFailed`` at its step, the
engine closed and the version installed here removed. Staging, loading, warming and the goldens
run on the manager's loader thread (``InLoader``); the download in its own thread.

``warm_up`` and ``warmup_feeds`` also serve the manager's rollbacks and second-stage loads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.core import AgentError
from agent.models.bundle import BundleError, stage_bare_model, unpack_bundle
from agent.models.deployment import DeployFailed, DeployRequest, InLoader, StepReport
from agent.models.fetch import DownloadAbort, Fetched, FetchError, download, verify_artifact, verify_statement
from agent.models.graph import check_fits_head, check_fits_input, image_axes
from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import ManifestError
from agent.models.priority import lowered_priority
from agent.models.store import ModelStore, StoreError
from agent.models.target import DeployTarget
from agent.runtime import EngineError, EngineSlot, Serving
from agent.wire import DeploymentStep

__all__ = ["Preparer", "check_goldens", "fitting_feeds", "stage", "warm_up", "warmup_crop", "warmup_feeds"]


class Preparer:
    """Prepares each deployment's candidate (``prepare``) and holds the download in flight (``abort``).

    Given the model store, the ``[deploy]`` settings, the key that signs deploy statements (None:
    none required), and the manager's loader thread (``in_loader``) and step report (``step``)."""

    def __init__(self, *, store: ModelStore, settings: Any, public_key: Any, in_loader: InLoader,
                 step: StepReport) -> None:
        self.store = store
        self.settings = settings
        self.public_key = public_key
        self._in_loader = in_loader
        self._step = step
        self._download: DownloadAbort | None = None

    def abort(self) -> None:
        """Stop the download in flight, if any (the agent is stopping)."""
        if self._download is not None:
            self._download.fire(FetchError("cancelled", "the agent is stopping"))

    async def prepare(self, req: DeployRequest, work: Path, target: DeployTarget,
                      load_options: EngineOptions) -> Serving:
        """The candidate of ``req`` for ``target``, loaded with ``load_options`` and validated; the
        download and the staged folder are in ``work``."""
        serving = target.slot.serving
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
            folder = await self._in_loader(stage, req, fetched.path, work, target.slot)
        except FetchError as exc:
            raise DeployFailed(DeploymentStep.VERIFYING, exc.code, exc.message) from exc
        except BundleError as exc:
            raise DeployFailed(DeploymentStep.VERIFYING, "bad_bundle", str(exc)) from exc
        if target.options.runtime == "tensorrt" and req.format != "engine":
            # The engine is built (or found in the engine cache) inside the load, in a worker process.
            await self._step(req, DeploymentStep.BUILDING, 0.5)
        await self._step(req, DeploymentStep.LOADING, 0.55)
        installed_here = req.version not in self.store.versions(req.name)
        try:
            installed = await self._in_loader(lambda: self.store.install(folder, activate=False))
            new = await self._in_loader(load_serving, installed, load_options)
        except (StoreError, EngineError, ValueError, OSError) as exc:
            if installed_here:
                self.store.remove(req.name, req.version)
            code = "disk_full" if getattr(exc, "errno", None) == 28 or "No space" in str(exc) else "load_failed"
            raise DeployFailed(DeploymentStep.LOADING, code, str(exc)) from exc
        try:
            await self._validate(req, new, target)
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
        """The download, bounded by ``download_timeout_s`` and stopped at once by ``abort()``."""
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

    async def _validate(self, req: DeployRequest, new: Serving, target: DeployTarget) -> None:
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
            feeds, share = warmup_feeds(target, new, self.settings.warmup_scale)
            timings = await self._in_loader(warm_up, new, feeds, self.settings.warmup_runs, self.settings.load_nice,
                                            self.settings.load_idle)
        except DeployFailed:
            raise
        except Exception as exc:  # the new engine failed on a real frame
            raise DeployFailed(DeploymentStep.WARMING, "inference_failed", f"{type(exc).__name__}: {exc}") from exc
        await self._step(req, DeploymentStep.VALIDATING, 0.85, warm_ms=round(float(np.median(timings)), 2),
                         warm_share=round(share, 3))
        # On a crop, the full frame's time is estimated in proportion to its pixels (a convolutional
        # model's cost); one run alone is a cold one, an upper bound.
        warm = float(np.median(timings[1:] if len(timings) > 1 else timings)) / share
        if warm > self.settings.latency_budget_ms:
            shown = "warm inference takes" if share == 1.0 else f"warm inference (from a {share:.0%} crop) takes about"
            raise DeployFailed(DeploymentStep.VALIDATING, "over_latency_budget",
                               f"{shown} {warm:.1f} ms, the budget is {self.settings.latency_budget_ms:.1f} ms")
        try:
            await self._in_loader(check_goldens, new)
        except DeployFailed:
            raise
        except Exception as exc:
            raise DeployFailed(DeploymentStep.VALIDATING, "golden_failed", f"{type(exc).__name__}: {exc}") from exc


def stage(req: DeployRequest, artifact: Path, work: Path, slot: EngineSlot) -> Path:
    """The model folder of a verified ``artifact``: a bundle unpacked, or a bare model given the
    manifest of what ``slot`` serves."""
    folder = work / "model"
    if req.format == "bundle":
        manifest = unpack_bundle(artifact, folder)
        if (manifest.name, manifest.version) != (req.name, req.version):
            raise BundleError(
                f"bundle holds {manifest.name} {manifest.version}, the deploy said {req.name} {req.version}")
        return folder
    serving = slot.serving
    if serving is None:
        raise BundleError("a bare model needs a serving model's manifest to inherit; deploy a bundle")
    stage_bare_model(artifact, folder, serving.manifest, req.name, req.version, serving.folder)
    return folder


def fitting_feeds(target: DeployTarget, new: Serving) -> dict[str, np.ndarray]:
    """Inputs from live data to warm ``new`` up, once it fits ``target`` (``does_not_fit_head`` if not)."""
    if target.fits is not None:
        try:
            target.fits(new)
        except (AgentError, ValueError) as exc:
            raise DeployFailed(DeploymentStep.VALIDATING, "does_not_fit_head",
                               f"{new.name} {new.version} cannot serve as a {target.role}: {exc}") from exc
    return target.feeds_for(new)


def warm_up(new: Serving, feeds: dict[str, np.ndarray], runs: int, nice: int | None,
            idle: bool = False) -> list[float]:
    """Infer ``feeds`` ``runs`` times at the loader's priority; the milliseconds each took.
    ``non_finite_output`` when an output holds NaN or infinity."""
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


def warmup_feeds(target: DeployTarget, new: Serving, scale: float) -> tuple[dict[str, np.ndarray], float]:
    """The warm-up's inputs for ``new`` (``fitting_feeds``, cropped by ``warmup_crop``) and the pixel share."""
    return warmup_crop(fitting_feeds(target, new), new, scale)


def warmup_crop(feeds: dict[str, np.ndarray], new: Serving, scale: float) -> tuple[dict[str, np.ndarray], float]:
    """``feeds`` centre-cropped to ``scale`` of each side for the warm-up, and the share of pixels kept.

    Only a model that takes any frame size is warmed on a crop: preprocessing ``resize = "multiple"``
    with no fixed ``height``/``width``, and the input's height or width dynamic. Each cropped side stays
    a multiple of ``multiple`` and within a TensorRT engine's optimization profile (a fixed profile: no
    crop). The session is then warm (kernels chosen, arenas made) for a fraction of a full frame's work
    beside the serving model, the warm-up's stall of the serving frames (docs/benchmarks.md). Anything
    else, or ``scale`` 1, is returned as it is with share 1.0."""
    spec = new.manifest.preprocess
    if scale >= 1.0 or spec.resize != "multiple":
        return feeds, 1.0
    image = check_fits_input(spec, new.engine.inputs)
    tensor = feeds.get(image.name)
    if tensor is None or tensor.ndim != len(image.shape):
        return feeds, 1.0
    profile = getattr(new.engine, "profiles", {}).get(image.name)
    index: list[slice] = [slice(None)] * tensor.ndim
    share = 1.0
    for axis, fixed in zip(image_axes(spec, image), (spec.height, spec.width), strict=True):
        if image.shape[axis] is not None or fixed is not None:
            continue  # a side of fixed size is served at that size only
        size = tensor.shape[axis]
        least = max(spec.multiple, profile.min[axis] if profile is not None else 0)
        kept = min(size, max(least, int(size * scale) // spec.multiple * spec.multiple))
        start = (size - kept) // 2
        index[axis] = slice(start, start + kept)
        share *= kept / size
    if share == 1.0:
        return feeds, 1.0
    return {**feeds, image.name: np.ascontiguousarray(tensor[tuple(index)])}, share


def check_goldens(new: Serving) -> None:
    """The bundle's golden inputs give its golden outputs on ``new``, within each golden's tolerance
    (``golden_mismatch``; ``non_finite_output`` for NaN or infinity)."""
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
