"""Turn an installed model into a serving engine with the configured runtime."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import structlog

from agent.models.graph import fuse_preprocessing
from agent.models.manifest import Manifest
from agent.models.prepare import optimized_graph
from agent.models.priority import lowered_priority
from agent.models.store import InstalledModel
from agent.runtime import Engine, EngineLoadError, OnnxRuntimeEngine, Serving

__all__ = ["EngineOptions", "load_serving"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    runtime: str = "onnxruntime"
    """Resolved runtime: ``onnxruntime`` or ``tensorrt`` (``auto`` is resolved before)."""
    threads: int = 2
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    fuse_preprocessing: bool = True
    load_nice: int | None = None
    """Niceness while the session is created (GIL-free work); None keeps the caller's."""
    load_idle: bool = False
    """``SCHED_IDLE`` too while the session is created (agent.models.priority)."""
    prepare_graph: bool = False
    """Make the optimised serving graph in a worker process and load that (agent.models.prepare)."""
    tensorrt_shapes: tuple[str, ...] = ()
    """Optimization profiles of dynamic inputs for TensorRT builds (``name:MIN:OPT:MAX``)."""
    tensorrt_precision: str = "auto"
    workspace_mb: int = 1024
    tensorrt_module: str = "tensorrt"
    """The Python module that provides TensorRT (its builder runs in a worker process)."""


def _onnxruntime(installed: InstalledModel, options: EngineOptions) -> Engine:
    manifest: Manifest = installed.manifest
    if manifest.format != "onnx":
        raise EngineLoadError(f"{manifest.name} {manifest.version}: a {manifest.format} file needs TensorRT")
    if options.prepare_graph:
        with lowered_priority(options.load_nice, options.load_idle):
            graph = optimized_graph(installed, options.fuse_preprocessing, options.providers)
            return OnnxRuntimeEngine.load(graph, threads=options.threads, providers=options.providers, optimize=False)
    if not options.fuse_preprocessing:
        with lowered_priority(options.load_nice, options.load_idle):
            return OnnxRuntimeEngine.load(installed.model_path, threads=options.threads, providers=options.providers)
    try:
        model = onnx.load(str(installed.model_path))
    except Exception as exc:  # onnx raises DecodeError and friends for files that are not ONNX
        raise EngineLoadError(f"{installed.model_path}: not an ONNX model: {exc}") from exc
    fused = fuse_preprocessing(model, manifest.preprocess).SerializeToString()
    with lowered_priority(options.load_nice, options.load_idle):
        return OnnxRuntimeEngine.load(fused, threads=options.threads, providers=options.providers)


def _tensorrt(installed: InstalledModel, options: EngineOptions) -> Engine:
    """A prebuilt engine made for this device, or the ONNX model built (or found in the cache)."""
    from agent.models.build import ensure_engine
    from agent.models.build_spec import BuildSpec, parse_precision, parse_shape
    from agent.models.engine_cache import EngineCache, Platform, _fsync_write, check_prebuilt
    from agent.runtime import TensorRTEngine

    manifest = installed.manifest
    if manifest.format == "engine":
        check_prebuilt(manifest, Platform.current(options.tensorrt_module))
        return TensorRTEngine.load(installed.model_path)
    cache = EngineCache.in_store(installed.path.parent.parent)
    onnx_path = installed.model_path
    if options.fuse_preprocessing:
        # The engine takes uint8 frames too: normalisation runs on the GPU.
        fused = cache.root / f"{manifest.files.get(manifest.model_file, manifest.version)}.fused.onnx"
        if not fused.exists():
            fused.parent.mkdir(parents=True, exist_ok=True)
            # Temp file, fsync, rename: a crash or a full disk never leaves a partial graph that
            # later loads would take for the cached one.
            _fsync_write(fused, fuse_preprocessing(onnx.load(str(onnx_path)), manifest.preprocess).SerializeToString())
        onnx_path = fused
    spec = BuildSpec(precision=parse_precision(options.tensorrt_precision),
                     shapes=dict(parse_shape(s) for s in options.tensorrt_shapes),
                     workspace_mb=options.workspace_mb)
    built = ensure_engine(onnx_path, spec, cache, tensorrt_module=options.tensorrt_module,
                          on_progress=lambda p: log.info("engine_build_progress", model=manifest.name,
                                                         version=manifest.version, progress=str(p)))
    return TensorRTEngine.load(built.path)


def load_serving(installed: InstalledModel, options: EngineOptions) -> Serving:
    """Load ``installed`` and wrap it for the slot; raises EngineLoadError with the reason."""
    manifest = installed.manifest
    loader = _tensorrt if options.runtime == "tensorrt" else _onnxruntime
    engine = loader(installed, options)
    sha256 = manifest.files.get(manifest.model_file, "")
    log.info(
        "engine_loaded", model=manifest.name, version=manifest.version,
        runtime=engine.runtime, fused_preprocessing=options.fuse_preprocessing,
    )
    return Serving(engine=engine, name=manifest.name, version=manifest.version, sha256=sha256,
                   manifest=manifest, folder=installed.path)
