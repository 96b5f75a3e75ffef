"""Pack a model into a deployable bundle: model, manifest, goldens, reference statistics, hashes, signature.

A bundle is a tar of one model folder (see ``agent.models.bundle``). ``pack``
checks that the manifest fits the model, writes golden inputs with the outputs
the model must reproduce, profiles the model on the video for the reference
statistics drift detection compares against (``agent.tools.profile``, the
same per-frame summary the live drift monitor makes), hashes every file into
the manifest and, given a private key, writes the bundle's signed statement
``<bundle>.sig`` (JSON: name, version, format, sha256, expiry and the ed25519
signature; the deploy command's ``statement`` field, as ``edge-agent deploy
--sign`` makes it).

Goldens come in pairs per frame: ``golden_<i>_in.npy`` is the float tensor of
the agent's float preprocessing path, ``golden_<i>_frame.npy`` the uint8 frame
(resized, NHWC, BGR) a graph with fused preprocessing takes; both expect
``golden_<i>_out.npy``, the float model's output. The validator runs whichever
fits the loaded engine's input.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from agent.core import one_of
from agent.models import (
    MANIFEST_FILE,
    STATEMENT_VALID_S,
    Golden,
    HeadSpec,
    Manifest,
    PreprocessSpec,
    SpecMismatchError,
    check_fits_head,
    check_fits_input,
    fuse_preprocessing,
    load_private_key,
    pack_bundle,
    sign_file,
)
from agent.runtime import OnnxRuntimeEngine
from agent.tools.errors import PackError
from agent.tools.frames import read_video_frames
from agent.tools.profile import DEFAULT_FRAMES as PROFILE_FRAMES
from agent.tools.profile import ProfileError, profile, video_frames
from agent.vision import Preprocessor

__all__ = [
    "GOLDEN_ATOL",
    "GOLDEN_FRAMES",
    "GOLDEN_RTOL",
    "HEAD_KINDS",
    "PROFILE_FRAMES",
    "PackResult",
    "build_manifest",
    "pack_model",
    "signature_path",
]

GOLDEN_FRAMES = 2
GOLDEN_RTOL = 1e-2
GOLDEN_ATOL = 1e-2
"""Goldens catch a wrong or broken model, not numeric noise: a reduced-precision engine
(FP16 or INT8 on TensorRT) must pass them too."""
PackTask = Literal["classify", "detect", "text_detect"]
HEAD_KINDS: dict[PackTask, str] = {"classify": "classify", "detect": "detect_yolo", "text_detect": "text_detect_db"}
MODEL_FILE = "model.onnx"
SIGNATURE_SUFFIX = ".sig"

@dataclass(frozen=True)
class PackResult:
    bundle: Path
    manifest: Manifest
    signature: Path | None


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + SIGNATURE_SUFFIX)


def _validated(model: type[PreprocessSpec] | type[HeadSpec], base: dict[str, Any],
               overrides: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate({**base, **{k: v for k, v in overrides.items() if v is not None}})
    except ValueError as exc:
        raise PackError(f"{what}: {exc}") from exc


def build_manifest(*, name: str, version: str, task: str, labels: Sequence[str],
                   template: Manifest | None = None, preprocess: dict[str, Any] | None = None,
                   head: dict[str, Any] | None = None, license: str | None = None,
                   description: str | None = None) -> Manifest:
    """A manifest from a template's preprocess/head (or defaults) with flags on top."""
    known = one_of(task, HEAD_KINDS)
    if known is None:
        raise PackError(f"task {task!r}: use one of {', '.join(HEAD_KINDS)}")
    base_pre = template.preprocess.model_dump() if template else {}
    base_head = template.head.model_dump() if template and template.task == task else {}
    pre_spec = _validated(PreprocessSpec, base_pre, preprocess or {}, "preprocessing")
    head_spec = _validated(HeadSpec, base_head,
                           {"kind": HEAD_KINDS[known], "labels": tuple(labels) or None, **(head or {})}, "head")
    try:
        return Manifest(name=name, version=version, task=known, model_file=MODEL_FILE,
                        preprocess=pre_spec, head=head_spec, license=license, description=description)
    except ValueError as exc:
        raise PackError(f"manifest: {exc}") from exc


def _check_fits(model: Path, manifest: Manifest) -> OnnxRuntimeEngine:
    engine = OnnxRuntimeEngine.load(model, threads=1)
    try:
        check_fits_input(manifest.preprocess, engine.inputs)
        check_fits_head(engine.outputs, manifest.head)
    except SpecMismatchError as exc:
        engine.close()
        raise PackError(f"the manifest does not fit the model: {exc}") from exc
    return engine


def _output(engine: OnnxRuntimeEngine, outputs: dict[str, np.ndarray], head: HeadSpec) -> np.ndarray:
    return outputs[head.output_name or engine.outputs[0].name]


def write_goldens(folder: Path, manifest: Manifest, engine: OnnxRuntimeEngine,
                  frames: Sequence[np.ndarray], rtol: float, atol: float) -> tuple[Golden, ...]:
    """Golden pairs (float tensor and uint8 frame) per frame; the fused graph is checked against them."""
    float_prep = Preprocessor.for_inputs(manifest.preprocess, engine.inputs)
    fused_model = fuse_preprocessing(onnx.load(str(folder / manifest.model_file)), manifest.preprocess)
    fused = OnnxRuntimeEngine.load(fused_model.SerializeToString(), threads=1)
    goldens: list[Golden] = []
    try:
        fused_prep = Preprocessor.for_inputs(manifest.preprocess, fused.inputs)
        for index, frame in enumerate(frames):
            tensor, _ = float_prep.prep(frame)
            expected = _output(engine, engine.infer({float_prep.input_name: tensor}), manifest.head)
            image, _ = fused_prep.prep(frame)
            got = _output(fused, fused.infer({fused_prep.input_name: image}), manifest.head)
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
                raise PackError(f"golden frame {index}: the fused graph's output differs from the float path's")
            names = {kind: f"golden_{index}_{kind}.npy" for kind in ("in", "frame", "out")}
            np.save(folder / names["in"], tensor)
            np.save(folder / names["frame"], np.ascontiguousarray(image))
            np.save(folder / names["out"], expected)
            goldens += [Golden(input_file=names["in"], output_file=names["out"], rtol=rtol, atol=atol),
                        Golden(input_file=names["frame"], output_file=names["out"], rtol=rtol, atol=atol)]
    finally:
        fused.close()
    return tuple(goldens)


def reference_statistics(folder: Path, video: Path, frames: int) -> dict[str, Any]:
    """The drift reference of the model folder ``folder`` on ``frames`` frames of ``video``."""
    try:
        return profile(folder, video_frames(video, frames), source=video.name)
    except ProfileError as exc:
        raise PackError(f"reference statistics: {exc}") from exc


def pack_model(model: Path, manifest: Manifest, out: Path, *, profile_video: Path,
               golden_frames: int = GOLDEN_FRAMES, profile_frames: int = PROFILE_FRAMES,
               rtol: float = GOLDEN_RTOL, atol: float = GOLDEN_ATOL, extra_files: Sequence[Path] = (),
               sign_key: Path | None = None, sign_valid_s: float = STATEMENT_VALID_S) -> PackResult:
    """Write the bundle ``out`` for ``model`` described by ``manifest``; with ``sign_key``, also its
    signed statement ``<out>.sig`` (valid ``sign_valid_s``)."""
    if not model.is_file():
        raise PackError(f"{model}: no such model file")
    with tempfile.TemporaryDirectory(prefix="edge-agent-pack-") as tmp:
        folder = Path(tmp)
        shutil.copy2(model, folder / MODEL_FILE)
        for extra in extra_files:
            if not extra.is_file():
                raise PackError(f"{extra}: no such file to include")
            if extra.name in (MODEL_FILE, MANIFEST_FILE) or extra.name.startswith("golden_"):
                raise PackError(f"{extra.name}: clashes with a file the bundle writes itself")
            shutil.copy2(extra, folder / extra.name)
        engine = _check_fits(folder / MODEL_FILE, manifest)
        try:
            frames = read_video_frames(profile_video, golden_frames)
            goldens = write_goldens(folder, manifest, engine, frames, rtol, atol)
        finally:
            engine.close()
        with_goldens = manifest.model_copy(update={"golden": goldens})
        with_goldens.write(folder / MANIFEST_FILE)
        reference = reference_statistics(folder, profile_video, profile_frames)
        with_goldens.model_copy(update={"reference": reference}).write(folder / MANIFEST_FILE)
        out.parent.mkdir(parents=True, exist_ok=True)
        written = pack_bundle(folder, out)
    signature = None
    if sign_key is not None:
        signature = signature_path(out)
        statement = sign_file(load_private_key(sign_key), out, name=written.name, version=written.version,
                              format="bundle", valid_s=sign_valid_s)
        signature.write_text(json.dumps(statement, sort_keys=True), encoding="ascii")
    return PackResult(out, written, signature)
