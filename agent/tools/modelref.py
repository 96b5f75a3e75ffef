"""A model as the tools see it (an ONNX file and its manifest) and a runner that feeds it like the agent.

``Runner`` loads the model on ONNX Runtime's CPU provider the way the agent's
loader does (preprocessing fused into the graph unless asked not to), makes the
agent's ``Preprocessor`` for the engine's input and the agent's head for the
manifest, so a tool sees exactly the tensors and predictions the agent would.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from agent.models import MANIFEST_FILE, Manifest, fuse_preprocessing
from agent.runtime import OnnxRuntimeEngine
from agent.tools.errors import ToolError
from agent.vision import Geometry, Prediction, Preprocessor, make_head

__all__ = [
    "DEFAULT_THREADS",
    "ModelRef",
    "Runner",
    "check_empty",
    "find_manifest",
    "model_file",
    "resolve_model",
    "write_model_folder",
]

DEFAULT_THREADS = 2
"""Intra-op threads, as the agent's default config uses."""
MODEL_FILE = "model.onnx"
CARRIED_FILES = ("LICENSE",)
"""Files of a source folder that a derived model folder keeps."""


@dataclass(frozen=True)
class ModelRef:
    """An ONNX file and the manifest that says how to feed it and read it."""

    path: Path
    manifest: Manifest
    folder: Path | None = None
    """The model's folder when it came as one (manifest.json beside the model)."""

    @property
    def label(self) -> str:
        return f"{self.manifest.name} {self.manifest.version} ({self.path.name})"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def model_file(arg: Path) -> Path:
    """The ONNX file behind ``arg``: the file itself, or the model file a folder's manifest names."""
    if arg.is_dir():
        manifest_path = arg / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ToolError(f"{arg}: a model folder needs a {MANIFEST_FILE}")
        return arg / Manifest.read(manifest_path).model_file
    if not arg.is_file():
        raise ToolError(f"{arg}: no such model file or folder")
    return arg


def find_manifest(arg: Path) -> Manifest | None:
    """The manifest in ``arg`` (a folder or a manifest file), or None when there is none."""
    candidate = arg / MANIFEST_FILE if arg.is_dir() else arg
    if candidate.suffix == ".json" and candidate.is_file():
        return Manifest.read(candidate)
    return None


def resolve_model(arg: Path, manifest: Path | Manifest | None = None) -> ModelRef:
    """``arg`` (a model folder or an .onnx file) with its manifest.

    An explicit ``manifest`` (a manifest file, a folder holding one, or a Manifest)
    wins; otherwise the folder's own. An .onnx file with neither is an error.
    """
    path = model_file(arg)
    chosen = manifest if isinstance(manifest, Manifest) else None
    if isinstance(manifest, Path):
        chosen = find_manifest(manifest)
        if chosen is None:
            raise ToolError(f"{manifest}: no {MANIFEST_FILE} there")
    if chosen is None and arg.is_dir():
        chosen = find_manifest(arg)
    if chosen is None:
        raise ToolError(f"{arg}: an .onnx file needs a manifest (give --manifest, or a model folder)")
    return ModelRef(path=path, manifest=chosen, folder=arg if arg.is_dir() else None)


def check_empty(out_dir: Path) -> None:
    """A tool writes a new model folder; it never mixes files into an existing one."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ToolError(f"{out_dir}: exists and is not an empty folder")


def write_model_folder(src: ModelRef, model: onnx.ModelProto, out_dir: Path, version: str,
                       source: str) -> Manifest:
    """``model`` as a folder derived from ``src``: model.onnx, the source's LICENSE, a manifest.

    The manifest keeps the source's preprocessing, head and reference statistics;
    goldens are dropped (they hold the source's outputs) and every file is hashed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / MODEL_FILE))
    if src.folder is not None:
        for name in CARRIED_FILES:
            if (src.folder / name).is_file():
                shutil.copy2(src.folder / name, out_dir / name)
    manifest = src.manifest.model_copy(update={
        "version": version, "model_file": MODEL_FILE, "format": "onnx", "golden": (), "files": {},
        "engine_key": None, "source": source,
    }).with_hashes(out_dir)
    manifest.write(out_dir / MANIFEST_FILE)
    return manifest


class Runner:
    """One model loaded like the agent loads it, fed frames like the agent feeds them."""

    def __init__(self, ref: ModelRef, *, threads: int = DEFAULT_THREADS, fused: bool = True) -> None:
        self.ref = ref
        spec = ref.manifest.preprocess
        source: Path | bytes = ref.path
        if fused:
            source = fuse_preprocessing(onnx.load(str(ref.path)), spec).SerializeToString()
        self.engine = OnnxRuntimeEngine.load(source, threads=threads)
        self.preprocessor = Preprocessor.for_inputs(spec, self.engine.inputs)
        self.head = make_head(ref.manifest.head)
        self.output_name = ref.manifest.head.output_name or self.engine.outputs[0].name

    def prep(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Geometry]:
        tensor, geometry = self.preprocessor.prep(frame)
        return {self.preprocessor.input_name: tensor}, geometry

    def infer(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """The outputs and the milliseconds inference took."""
        start = time.perf_counter()
        outputs = self.engine.infer(feeds)
        return outputs, (time.perf_counter() - start) * 1000.0

    def predict(self, frame: np.ndarray) -> tuple[np.ndarray, Prediction, float]:
        """The head's raw output, the prediction and the inference milliseconds for one frame."""
        feeds, geometry = self.prep(frame)
        outputs, elapsed = self.infer(feeds)
        return outputs[self.output_name], self.head(outputs, geometry), elapsed

    def close(self) -> None:
        self.engine.close()
