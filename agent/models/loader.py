"""Turn an installed model into a serving engine with the configured runtime."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import structlog

from ..runtime.base import Engine, EngineLoadError
from ..runtime.onnxrt import OnnxRuntimeEngine
from ..runtime.slot import Serving
from .graph import fuse_preprocessing
from .manifest import Manifest
from .priority import lowered_priority
from .store import InstalledModel

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


def _onnxruntime(installed: InstalledModel, options: EngineOptions) -> Engine:
    manifest: Manifest = installed.manifest
    if manifest.format != "onnx":
        raise EngineLoadError(f"{manifest.name} {manifest.version}: a {manifest.format} file needs TensorRT")
    if not options.fuse_preprocessing:
        with lowered_priority(options.load_nice):
            return OnnxRuntimeEngine.load(installed.model_path, threads=options.threads, providers=options.providers)
    try:
        model = onnx.load(str(installed.model_path))
    except Exception as exc:  # onnx raises DecodeError and friends for files that are not ONNX
        raise EngineLoadError(f"{installed.model_path}: not an ONNX model: {exc}") from exc
    fused = fuse_preprocessing(model, manifest.preprocess).SerializeToString()
    with lowered_priority(options.load_nice):
        return OnnxRuntimeEngine.load(fused, threads=options.threads, providers=options.providers)


def _tensorrt(installed: InstalledModel, options: EngineOptions) -> Engine:
    from ..runtime.tensorrt import TensorRTEngine

    return TensorRTEngine.load(installed.model_path)


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
