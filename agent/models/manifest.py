"""What a model is: name, version, task, input spec, head, labels, hashes, references.

A manifest travels with every model (``manifest.json`` beside the model file in the
store and in a bundle). It tells the agent how to feed the model (preprocessing),
how to read its outputs (the head), and what it saw when it was profiled (the
reference statistics that drift detection compares against).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from agent.core import NAME_PATTERN, ModelName, ModelVersion, check_name
from agent.models.errors import ModelError
from agent.monitor import BiasConfigError, Reference, ReferenceDataError, SliceSpec

__all__ = [
    "MANIFEST_FILE",
    "NAME_PATTERN",
    "Golden",
    "HeadSpec",
    "Manifest",
    "ManifestError",
    "MonitorData",
    "PreprocessSpec",
    "check_name",
    "confined",
    "sha256_file",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
HASH_CHUNK = 1 << 20
MAX_PATH_LENGTH = 255
"""A bundle-relative path (a ``files`` key, a golden file): ample for real bundles, bounded for logs."""
MAX_FILES = 64
"""As many as a bundle may hold members (agent.models.bundle.MAX_MEMBERS)."""
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
PATH_PART = re.compile(r"[^\x00-\x1f\x7f\\/]{1,255}")
"""One component of a bundle-relative path: no control characters, no separators."""


class ManifestError(ModelError, ValueError):
    """A manifest is missing, unreadable or invalid."""


def check_relative(value: str, what: str) -> str:
    """A path inside the model's folder: relative, '/'-separated, no '.', '..' or empty parts."""
    parts = value.split("/")
    if (len(value) > MAX_PATH_LENGTH or value.startswith("/") or not value
            or any(p in (".", "..") or not PATH_PART.fullmatch(p) for p in parts)):
        raise ValueError(f"{what} {value!r} must be a relative path inside the model's folder "
                         f"(no leading '/', no '.' or '..', at most {MAX_PATH_LENGTH} characters)")
    return value


def confined(folder: Path, rel: str, what: str) -> Path:
    """``folder/rel`` when it is a regular file inside ``folder`` reached through no link; else ManifestError."""
    try:
        check_relative(rel, what)
    except ValueError as exc:
        raise ManifestError(str(exc)) from exc
    path = folder
    for part in PurePosixPath(rel).parts:
        path = path / part
        if path.is_symlink():
            raise ManifestError(f"{what} {rel!r} goes through a link; files must lie inside the model's folder")
    if not path.is_file():
        raise ManifestError(f"{what} {rel!r}: listed in the manifest but missing")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    boxes, expanded by ``unclip_ratio``. ``ctc``: a text recognizer's per-step
    character probabilities ``[N, steps, classes]`` decoded greedily (best class per
    step, repeats merged, blanks dropped) with the characters of ``dictionary``.
    """

    kind: Literal["classify", "detect_yolo", "text_detect_db", "ctc"]
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
    dictionary: str | None = None
    """``ctc``: a UTF-8 file in the model's folder, one character a line (class 0 is the blank)."""

    @field_validator("dictionary")
    @classmethod
    def _dictionary(cls, value: str | None) -> str | None:
        return None if value is None else check_relative(value, "dictionary")


class Golden(_Strict):
    """A known input and the output the model must reproduce (within tolerances)."""

    input_file: str
    """An .npy in the model's folder: the preprocessed input tensor."""
    output_file: str
    """An .npy holding the expected first output."""
    rtol: float = Field(default=1e-2, ge=0.0)
    atol: float = Field(default=1e-3, ge=0.0)

    @field_validator("input_file", "output_file")
    @classmethod
    def _inside(cls, value: str) -> str:
        return check_relative(value, "golden file")


@dataclass(frozen=True)
class MonitorData:
    """A manifest's ``reference`` and ``slices`` parsed into what the drift and bias monitors take."""

    reference: Reference | None
    slices: SliceSpec

    @classmethod
    def empty(cls) -> MonitorData:
        """No reference and no extra slices: what the monitors run on when a manifest's data is bad."""
        return cls(None, SliceSpec())


class Manifest(_Strict):
    """A model's manifest; ``check_bundle`` adds what a delivered bundle must also satisfy."""

    schema_version: int = Field(default=MANIFEST_SCHEMA_VERSION, ge=1, le=MANIFEST_SCHEMA_VERSION)
    name: ModelName
    version: ModelVersion
    task: Literal["classify", "detect", "text_detect", "recognize"]
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
    _monitor: tuple[Any, Any, MonitorData] | None = PrivateAttr(default=None)

    @field_validator("model_file")
    @classmethod
    def _model_file(cls, value: str) -> str:
        return check_name(value, "model_file")

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_FILES:
            raise ValueError(f"lists {len(value)} files, more than {MAX_FILES}")
        for rel, digest in value.items():
            check_relative(rel, "file")
            if not SHA256_PATTERN.fullmatch(digest):
                raise ValueError(f"{rel!r}: the sha256 must be 64 lowercase hex digits")
        return value

    def monitor_data(self) -> MonitorData:
        """``reference`` and ``slices`` parsed for the monitors, once per manifest object.

        Raises ManifestError naming the field. Called while a deployment validates,
        so that the swap (agent.device.monitors) only assigns what was parsed here.
        """
        cached = self._monitor
        if cached is not None and cached[0] is self.reference and cached[1] is self.slices:
            return cached[2]
        try:
            reference = None if self.reference is None else Reference.parse(self.reference)
            slices = SliceSpec.parse(self.slices)
        except (ReferenceDataError, BiasConfigError) as exc:
            raise ManifestError(str(exc)) from exc
        if reference is not None and reference.task != self.task:
            raise ManifestError(f"reference.task: {reference.task!r} is not the model's task {self.task!r}")
        data = MonitorData(reference, slices)
        self._monitor = (self.reference, self.slices, data)
        return data

    def check_bundle(self, folder: Path) -> None:
        """What a delivered bundle must satisfy beyond the schema: every listed file and golden file
        inside ``folder`` (no links out) with its hash, the model file present, the monitor data valid.
        ManifestError names the field."""
        self.verify_files(folder)
        confined(folder, self.model_file, "model_file")
        for i, golden in enumerate(self.golden):
            confined(folder, golden.input_file, f"golden.{i}.input_file")
            confined(folder, golden.output_file, f"golden.{i}.output_file")
        self.monitor_data()

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the document"
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
            path = confined(folder, rel, "files")
            actual = sha256_file(path)
            if actual != expected:
                raise ManifestError(f"{rel}: sha256 {actual[:12]}... does not match {expected[:12]}...")
