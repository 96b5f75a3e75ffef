"""ONNX -> TensorRT engine, built on the device in a worker process, cached by EngineKey.

``ensure_engine`` is what the deployment manager calls: it computes the engine
key (ONNX sha256, TensorRT version, GPU, precision flags, shape profile), returns
the cached engine on a hit, and otherwise builds it in a spawned worker process so
that the agent's frame loop keeps serving the old engine meanwhile. Progress comes
back through a queue as :class:`BuildProgress` events: TensorRT's own phases via an
``IProgressMonitor`` where the TensorRT version has it, and the builder's coarse
phases (parse, configure, build, save) always. The timing cache persists per
platform beside the engines, so a rebuild for a new profile or model version is
faster.

The CLI, ``edge-agent model build MODEL.onnx`` (also ``python -m agent.cli.build``),
is agent/cli/build.py.
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import onnx
import structlog
from google.protobuf.message import DecodeError

from agent.models.build_spec import (
    DEFAULT_WORKSPACE_MB,
    BuildSpec,
    BuildSpecError,
    model_inputs,
    model_precision,
    plan_precision,
    profile_text,
    resolve_profiles,
    target_precision,
)
from agent.models.engine_cache import EngineCache, EngineKey, Platform
from agent.models.errors import ModelError
from agent.models.manifest import sha256_file
from agent.models.sparsity import sparsity_report
from agent.runtime import EngineError, ShapeProfile, make_logger

__all__ = [
    "BuildError",
    "BuildJob",
    "BuildProgress",
    "BuiltEngine",
    "build_plan",
    "copy_engine",
    "ensure_engine",
    "run_build_worker",
]

log = structlog.get_logger(__name__)

MB = 1 << 20
QUEUE_POLL_S = 0.5
"""How often the parent looks at the worker while no progress arrives."""
WORKER_JOIN_S = 10.0
"""Time a finished worker gets to exit before it is killed."""
SPAWN: Final = "spawn"
"""A fresh interpreter: no CUDA context or threads inherited from the agent."""


class BuildError(ModelError, EngineError):
    """An engine could not be built (bad request, parser error, TensorRT failure, worker died)."""


@dataclass(frozen=True)
class BuildProgress:
    """One progress event of a build: a phase started, advanced a step, or finished."""

    phase: str
    event: Literal["start", "step", "finish"]
    step: int = 0
    steps: int = 0
    parent: str | None = None


@dataclass(frozen=True)
class BuildJob:
    """Everything the worker needs; crosses the process boundary, so plain data only."""

    onnx_path: Path
    output_path: Path
    precision: str
    carried_precision: str
    profiles: Mapping[str, ShapeProfile]
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    sparse: bool = False
    dla_core: int | None = None
    version_compatible: bool = False
    timing_cache: Path | None = None
    tensorrt_module: str = "tensorrt"
    """Import name of TensorRT in the worker (tests name a double)."""


@dataclass(frozen=True)
class BuiltEngine:
    """Where the engine is, under which key, and whether the cache already had it."""

    path: Path
    key: EngineKey
    cached: bool
    report: Mapping[str, Any]


Emit = Callable[[BuildProgress], None]


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    if not strongly_typed:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _progress_monitor(trt: Any, emit: Emit) -> Any | None:
    """An IProgressMonitor relaying TensorRT's phases, where this TensorRT has the class."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]  # TensorRT's IProgressMonitor, untyped
        def __init__(self) -> None:
            super().__init__()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            emit(BuildProgress(phase_name, "start", 0, num_steps, parent_phase))

        def step_complete(self, phase_name: str, step: int) -> bool:
            emit(BuildProgress(phase_name, "step", step + 1))
            return True

        def phase_finish(self, phase_name: str) -> None:
            emit(BuildProgress(phase_name, "finish"))

    return _Monitor()


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{onnx_path}: TensorRT's ONNX parser refused the model: "
                         + (" | ".join(errors) or logger.take_errors()))


def _configure(trt: Any, builder: Any, job: BuildJob, flags: Sequence[str]) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job.workspace_mb * MB)
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if job.dla_core is not None:
        cores = builder.num_DLA_cores
        if job.dla_core >= cores:
            raise BuildError(f"DLA core {job.dla_core} asked for; this device has {cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = job.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if job.profiles:
        profile = builder.create_optimization_profile()
        for name, shapes in job.profiles.items():
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        if config.add_optimization_profile(profile) < 0:
            raise BuildError(f"TensorRT refused the optimization profile {dict(job.profiles)}")
    return config


def _load_timing_cache(config: Any, path: Path | None) -> bool:
    """Attach the timing cache from ``path`` (empty if none); True when one was read."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning("timing_cache_ignored", path=str(path))
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        return False
    return bool(data)


def _write_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with tmp.open("wb") as handle:
        handle.write(data)
    tmp.replace(path)


def build_plan(job: BuildJob, trt: Any, emit: Emit) -> dict[str, Any]:
    """Build the engine of ``job`` with the TensorRT module ``trt``; runs in the worker."""
    logger = make_logger(trt)
    flag_names = set(getattr(trt.BuilderFlag, "__members__", {}))
    network_flags = getattr(trt.NetworkDefinitionCreationFlag, "__members__", {})
    plan = plan_precision(job.precision, job.carried_precision,
                          has_strongly_typed="STRONGLY_TYPED" in network_flags,
                          has_fp16_flag="FP16" in flag_names, tensorrt_version=trt.__version__)
    flags = list(plan.builder_flags)
    if job.sparse:
        flags.append("SPARSE_WEIGHTS")
    if job.version_compatible:
        flags += ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    emit(BuildProgress("parse", "start"))
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan.strongly_typed))
    _parse(trt, network, logger, job.onnx_path)
    emit(BuildProgress("parse", "finish"))
    emit(BuildProgress("configure", "start"))
    config = _configure(trt, builder, job, flags)
    timing_hit = _load_timing_cache(config, job.timing_cache)
    monitor = _progress_monitor(trt, emit)
    if monitor is not None:
        config.progress_monitor = monitor
    emit(BuildProgress("configure", "finish"))
    emit(BuildProgress("build", "start"))
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{job.onnx_path}: TensorRT could not build the engine: "
                         f"{logger.take_errors()}")
    emit(BuildProgress("build", "finish"))
    emit(BuildProgress("save", "start"))
    _write_atomic(job.output_path, serialized)
    if job.timing_cache is not None:
        _write_atomic(job.timing_cache, config.get_timing_cache().serialize())
    emit(BuildProgress("save", "finish"))
    return {
        "tensorrt_version": str(trt.__version__),
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": flags,
        "timing_cache_reused": timing_hit,
        "build_s": round(time.monotonic() - started, 3),
        "progress_monitor": monitor is not None,
    }


def _worker(job: BuildJob, messages: Any) -> None:
    """Entry point of the build process: build, then report ``done`` or ``error``."""
    def emit(progress: BuildProgress) -> None:
        messages.put(("progress", progress))

    try:
        trt = importlib.import_module(job.tensorrt_module)
        messages.put(("done", build_plan(job, trt, emit)))
    except (BuildError, BuildSpecError) as exc:
        messages.put(("error", str(exc)))
    except Exception as exc:  # the parent must learn why, whatever TensorRT raised
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


def run_build_worker(job: BuildJob, *, timeout_s: float,
                     on_progress: Emit | None = None) -> dict[str, Any]:
    """Run :func:`build_plan` in a spawned process; relay progress; return its report.

    Blocks the calling thread (run it with ``asyncio.to_thread`` from the event loop).
    A worker that dies, errs or outlives ``timeout_s`` raises BuildError.
    """
    context = multiprocessing.get_context(SPAWN)
    messages = context.Queue()
    process = context.Process(target=_worker, args=(job, messages), name="engine-build",
                              daemon=True)
    process.start()
    log.info("engine_build_started", onnx=str(job.onnx_path), pid=process.pid,
             precision=job.precision)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                if not process.is_alive():
                    raise BuildError(f"engine build worker died with exit code "
                                     f"{process.exitcode}") from None
                if time.monotonic() > deadline:
                    raise BuildError(f"engine build took longer than {timeout_s:.0f} s; "
                                     "stopped") from None
                continue
            if kind == "progress":
                if on_progress is not None:
                    on_progress(payload)
            elif kind == "error":
                raise BuildError(payload)
            else:
                return dict(payload)
    finally:
        process.join(WORKER_JOIN_S)
        if process.is_alive():
            process.kill()
            process.join()
        messages.close()


def ensure_engine(
    onnx_path: Path,
    spec: BuildSpec,
    cache: EngineCache,
    *,
    platform: Platform | None = None,
    on_progress: Emit | None = None,
    tensorrt_module: str = "tensorrt",
) -> BuiltEngine:
    """The engine for ``onnx_path`` under ``spec``: from the cache, or built and cached."""
    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path))
    except (OSError, DecodeError, ValueError) as exc:
        raise BuildError(f"{onnx_path}: cannot read ONNX model: {exc}") from exc
    carried = model_precision(model)
    precision = target_precision(spec.precision, carried)
    profiles = resolve_profiles(model_inputs(model), spec.shapes)
    sparse = spec.sparse == "on" or (spec.sparse == "auto" and sparsity_report(model).worth_flag)
    del model
    platform = platform if platform is not None else Platform.current(tensorrt_module)
    label = "+".join([precision]
                     + (["sparse"] if sparse else [])
                     + ([f"dla{spec.dla_core}"] if spec.dla_core is not None else [])
                     + (["vc"] if spec.version_compatible else []))
    key = EngineKey.for_platform(platform, onnx_sha256=sha256_file(onnx_path), precision=label,
                                 profile=profile_text(profiles))
    hit = cache.lookup(key)
    if hit is not None:
        log.info("engine_cache_hit", path=str(hit), onnx=str(onnx_path), precision=label)
        return BuiltEngine(hit, key, True, {})
    job = BuildJob(onnx_path=onnx_path, output_path=cache.scratch_path(key), precision=precision,
                   carried_precision=carried, profiles=profiles, workspace_mb=spec.workspace_mb,
                   sparse=sparse, dla_core=spec.dla_core,
                   version_compatible=spec.version_compatible,
                   timing_cache=cache.timing_cache_path(platform), tensorrt_module=tensorrt_module)
    try:
        report = run_build_worker(job, timeout_s=spec.timeout_s, on_progress=on_progress)
    except BaseException:
        job.output_path.unlink(missing_ok=True)
        raise
    path = cache.store(key, job.output_path, {**report, "spec": _spec_record(spec)})
    log.info("engine_built", path=str(path), onnx=str(onnx_path), **report)
    return BuiltEngine(path, key, False, report)


def _spec_record(spec: BuildSpec) -> dict[str, Any]:
    record = asdict(spec)
    record["shapes"] = {name: asdict(p) for name, p in spec.shapes.items()}
    return record


def copy_engine(built: BuiltEngine, dest: Path) -> Path:
    """Copy ``built``'s engine file to ``dest`` atomically (a reader sees no half-written plan); return ``dest``."""
    _write_atomic(dest, built.path.read_bytes())
    return dest
