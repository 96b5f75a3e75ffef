"""The serving graph, made once in a worker process, so that loading a model beside the serving one is cheap.

Loading an ONNX model the plain way holds the agent's GIL for most of a second on a
small device (``onnx.load``, the preprocessing fusion, serialisation, ONNX Runtime's
graph passes), and the frame worker needs the GIL between two inferences. Here a
worker process (a fresh interpreter, at the niceness and scheduling policy of the
thread that starts it: the loader's) does all of it with one intra-op thread and
saves ONNX Runtime's optimised graph (``optimized_model_filepath``) in the store's
``.ort-cache``; the agent then opens that file with the graph passes off. The file
is made for this machine (it may hold CPU-specific layouts): its name keys the
model's sha256, the fusion and its preprocessing spec, the ONNX Runtime version, the providers and the CPU. A
file is written whole (temporary name, fsync, rename) or not at all.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from agent.models.manifest import PreprocessSpec
from agent.models.store import InstalledModel
from agent.runtime import EngineLoadError, OnnxRuntimeEngine

__all__ = ["CACHE_DIR", "GraphJob", "optimized_graph", "serving_graph_path"]

log = structlog.get_logger(__name__)

CACHE_DIR: Final = ".ort-cache"
"""Beside the installed models in the store (like TensorRT's ``.engine-cache``)."""
WORKER_TIMEOUT_S = 600.0
"""The longest a graph may take to prepare (a big model at the lowest priority on a busy device)."""
WORKER_THREADS = 1
"""The worker's intra-op threads: its graph passes take one core at most from the serving engine."""


@dataclass(frozen=True)
class GraphJob:
    """What the worker makes: ``model`` (fused with ``preprocess`` when set) optimised into ``output``."""

    model: Path
    output: Path
    preprocess: PreprocessSpec | None
    providers: tuple[str, ...]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def serving_graph_path(installed: InstalledModel, fuse: bool, providers: tuple[str, ...]) -> Path:
    """Where the optimised graph of ``installed`` for this machine is kept."""
    import onnxruntime as ort

    manifest = installed.manifest
    model_sha = manifest.files.get(manifest.model_file) or f"{manifest.name}-{manifest.version}"
    fused = manifest.preprocess.model_dump_json() if fuse else "unfused"  # the fusion bakes the spec in
    key = "\n".join([model_sha, fused, ort.__version__, ",".join(providers), platform.machine(), _cpu()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return installed.path.parent.parent / CACHE_DIR / f"{digest}.onnx"


def make_graph(job: GraphJob) -> None:
    """Fuse (when asked) and optimise ``job.model`` into ``job.output`` (in the worker process)."""
    import onnx

    from agent.models.graph import fuse_preprocessing

    source: Path | bytes = job.model
    if job.preprocess is not None:
        try:
            model = onnx.load(str(job.model))
        except Exception as exc:  # onnx raises DecodeError and friends for files that are not ONNX
            raise EngineLoadError(f"not an ONNX model: {exc}") from exc
        source = fuse_preprocessing(model, job.preprocess).SerializeToString()
    tmp = job.output.with_name(f".tmp-{os.getpid()}-{job.output.name}")
    try:
        OnnxRuntimeEngine.load(source, threads=WORKER_THREADS, providers=job.providers, save_optimized=tmp).close()
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.rename(job.output)
    finally:
        tmp.unlink(missing_ok=True)


WORKER_CODE: Final = "from agent.models.prepare import worker_main; worker_main()"
"""What the worker process runs: a fresh interpreter that imports only this module's needs."""


def worker_main() -> None:
    """The worker process: a GraphJob as JSON on stdin, made; ``{"error": ...}`` on stdout."""
    import json
    import sys

    data = json.loads(sys.stdin.read())
    job = GraphJob(Path(data["model"]), Path(data["output"]),
                   PreprocessSpec.model_validate(data["preprocess"]) if data["preprocess"] else None,
                   tuple(data["providers"]))
    try:
        make_graph(job)
        error = None
    except Exception as exc:  # the parent must learn why, whatever onnx or ONNX Runtime raised
        error = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps({"error": error}))


def optimized_graph(installed: InstalledModel, fuse: bool, providers: tuple[str, ...]) -> Path:
    """The optimised graph of ``installed``: from the cache, or made now in a worker process.

    Blocks the calling thread; the worker inherits its niceness and scheduling policy.
    Raises EngineLoadError with the worker's reason."""
    import json
    import subprocess
    import sys

    output = serving_graph_path(installed, fuse, providers)
    if output.is_file():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    preprocess = installed.manifest.preprocess.model_dump(mode="json") if fuse else None
    job = json.dumps({"model": str(installed.model_path), "output": str(output), "preprocess": preprocess,
                      "providers": list(providers)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", WORKER_CODE], input=job, capture_output=True, text=True,
                              env=env, timeout=WORKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise EngineLoadError(f"{installed.model_path}: preparing the graph took longer than "
                              f"{WORKER_TIMEOUT_S:.0f} s; stopped") from None
    try:
        error = json.loads(done.stdout)["error"]
    except (ValueError, KeyError, TypeError):
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        raise EngineLoadError(f"{installed.model_path}: the graph worker ended with exit code {done.returncode}"
                              f" {tail[0]}".rstrip()) from None
    if error is not None:
        raise EngineLoadError(f"{installed.model_path}: {error}")
    log.info("serving_graph_prepared", model=installed.manifest.name, version=installed.manifest.version,
             path=str(output), seconds=round(time.monotonic() - started, 2))
    return output
