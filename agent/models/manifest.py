"""What a model is: name, version, task, input spec, head, labels, hashes, references.

A manifest travels with every model (``manifest.json`` beside the model file in the
store and in a bundle). It tells the agent how to feed the model (preprocessing),
how to read its outputs (the head), and what it saw when it was profiled (the
reference statistics that drift detection compares against).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..names import NAME_PATTERN, ModelName, ModelVersion, check_name

__all__ = [
    "MANIFEST_FILE",
    "NAME_PATTERN",
    "Golden",
    "HeadSpec",
    "Manifest",
    "ManifestError",
    "PreprocessSpec",
    "check_name",
    "sha256_file",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
HASH_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest is missing, unreadable or invalid."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Strict):
    """How a BGR camera frame becomes the model's input tensor.

    ``resize``: ``stretch`` to (height, width); ``letterbox`` keeps the aspect ratio
    and pads with ``pad_value``; ``short_side_crop`` scales the short side to
    ``resize_short`` then centre-crops (height, width); ``multiple`` keeps the
    frame's size rounded down to a multiple of ``multiple`` (dynamic-shape
    detectors such as DB text detectors).
    """

    input_name: str | None = None
    resize: Literal["stretch", "letterbox", "short_side_crop", "multiple"] = "stretch"
    height: int | None = Field(default=None, ge=1, le=8192)
    width: int | None = Field(default=None, ge=1, le=8192)
    resize_short: int | None = Field(default=None, ge=1, le=8192)
    multiple: int = Field(default=32, ge=1, le=256)
    color: Literal["rgb", "bgr"] = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = Field(default=114, ge=0, le=255)


class HeadSpec(_Strict):
    """How the model's outputs become a prediction.

    ``classify``: softmax (unless ``softmax`` is false because the model already
    outputs probabilities) then top-k with labels. ``detect_yolo``: YOLOv8-style
    (1, 4 + classes, anchors) decode with class-wise NMS. ``text_detect_db``: the
    probability map of a DB text detector (PP-OCR) binarised and turned into
    boxes, expanded by ``unclip_ratio``.
    """

    kind: Literal["classify", "detect_yolo", "text_detect_db"]
    output_name: str | None = None
    labels: tuple[str, ...] = ()
    softmax: bool = True
    top_k: int = Field(default=5, ge=1, le=1000)
    conf_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1, le=10_000)
    bin_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    box_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    unclip_ratio: float = Field(default=1.6, gt=0.0, le=10.0)
    min_size: int = Field(default=3, ge=1)


class Golden(_Strict):
    """A known input and the output the model must reproduce (within tolerances)."""

    input_file: str
    """An .npy in the model's folder: the preprocessed input tensor."""
    output_file: str
    """An .npy holding the expected first output."""
    rtol: float = 1e-2
    atol: float = 1e-3


class Manifest(_Strict):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: ModelName
    version: ModelVersion
    task: Literal["classify", "detect", "text_detect"]
    format: Literal["onnx", "engine"] = "onnx"
    model_file: str = "model.onnx"
    preprocess: PreprocessSpec
    head: HeadSpec
    license: str | None = None
    source: str | None = None
    description: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every file of the model's folder (bundle), by relative path."""
    golden: tuple[Golden, ...] = ()
    reference: dict[str, Any] | None = None
    """Reference statistics for drift (written by ``edge-agent model profile``)."""
    slices: dict[str, Any] = Field(default_factory=dict)
    """Extra bias slices the model's owner names."""
    engine_key: dict[str, str] | None = None
    """For a prebuilt TensorRT engine: the platform it was built for."""

    @field_validator("model_file")
    @classmethod
    def _model_file(cls, value: str) -> str:
        return check_name(value, "model_file")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ManifestError(f"{path}: {where}: {first['msg']}") from exc

    def write(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def with_hashes(self, folder: Path) -> Manifest:
        """The same manifest with ``files`` set to the sha256 of every file in ``folder``."""
        files = {
            str(p.relative_to(folder)): sha256_file(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE
        }
        return self.model_copy(update={"files": files})

    def verify_files(self, folder: Path) -> None:
        """Raise ManifestError when a listed file is missing or its hash differs."""
        for rel, expected in self.files.items():
            path = folder / rel
            if not path.is_file():
                raise ManifestError(f"{rel}: listed in the manifest but missing")
            actual = sha256_file(path)
            if actual != expected:
                raise ManifestError(f"{rel}: sha256 {actual[:12]}... does not match {expected[:12]}...")
