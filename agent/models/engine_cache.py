"""TensorRT engines built on the device, cached by what makes them valid.

A serialized TensorRT engine runs only with the TensorRT version and on the GPU
(name and compute capability) it was built for, and it bakes in the precision
and the input-shape profile chosen at build time. :class:`EngineKey` names all of
that plus the ONNX file's sha256; the cache keeps one engine per key::

    <store>/.engine-cache/<key digest>.engine   the plan
    <store>/.engine-cache/<key digest>.json     the key, and what the build reported
    <store>/.engine-cache/timing-<platform>.cache  TensorRT's timing cache, per platform

A prebuilt engine shipped in a bundle records its key in ``Manifest.engine_key``;
:func:`check_prebuilt` refuses it on a device whose platform differs, saying which
part differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.models.errors import ModelError
from agent.models.manifest import Manifest
from agent.runtime import EngineLoadError, gpu_probe, import_tensorrt

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "CACHE_DIR",
    "EngineCache",
    "EngineKey",
    "EngineKeyMismatch",
    "Platform",
    "check_prebuilt",
]

log = structlog.get_logger(__name__)

CACHE_DIR = ".engine-cache"
ENGINE_SUFFIX = ".engine"
META_SUFFIX = ".json"
DIGEST_CHARS = 24
TMP_PREFIX = ".tmp-"
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

FIELD_LABELS = {
    "onnx_sha256": "ONNX sha256",
    "tensorrt_version": "TensorRT version",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "precision": "precision flags",
    "profile": "shape profile",
}
PLATFORM_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")


class EngineKeyMismatch(ModelError, EngineLoadError):
    """A prebuilt engine was built for another platform than this device."""


def _non_empty(owner: DataclassInstance) -> None:
    for item in fields(owner):
        value = getattr(owner, item.name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{type(owner).__name__}.{item.name} must be a non-empty string, "
                             f"got {value!r}")


@dataclass(frozen=True)
class Platform:
    """What a TensorRT engine is tied to on the device: TensorRT version and GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    def __post_init__(self) -> None:
        _non_empty(self)

    @classmethod
    def current(cls, tensorrt_module: str = "tensorrt") -> Platform:
        """This device's platform; EngineLoadError without a GPU or without TensorRT."""
        gpu = gpu_probe()
        if isinstance(gpu, str):
            raise EngineLoadError(f"TensorRT engines need an NVIDIA GPU with a working driver: "
                                  f"{gpu}")
        trt = import_tensorrt((tensorrt_module,))
        return cls(str(trt.__version__), gpu.name, gpu.sm)

    def slug(self) -> str:
        """A file-name-safe name of the platform."""
        text = f"trt{self.tensorrt_version}-{self.gpu_name}-sm{self.compute_capability}"
        return UNSAFE_CHARS.sub("_", text)


@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on; two builds with equal keys are interchangeable."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: str

    def __post_init__(self) -> None:
        _non_empty(self)

    @classmethod
    def for_platform(cls, platform: Platform, *, onnx_sha256: str, precision: str,
                     profile: str) -> EngineKey:
        return cls(onnx_sha256=onnx_sha256, precision=precision, profile=profile,
                   **asdict(platform))

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> EngineKey:
        names = [item.name for item in fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = sorted(set(names) - set(data))
        if unknown or missing:
            raise ValueError(f"engine key: unknown fields {unknown}, missing fields {missing}")
        return cls(**{name: data[name] for name in names})

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def platform(self) -> Platform:
        return Platform(self.tensorrt_version, self.gpu_name, self.compute_capability)

    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]

    def differences(self, other: EngineKey) -> list[str]:
        """One phrase per field that differs: ``GPU differs: 'Orin' != 'Xavier'``."""
        return _differences(self.to_dict(), other.to_dict(), [f.name for f in fields(self)])


def _differences(mine: Mapping[str, str], theirs: Mapping[str, str], names: list[str]) -> list[str]:
    return [
        f"{FIELD_LABELS[name]} differs: {mine[name]!r} != {theirs[name]!r}"
        for name in names
        if mine[name] != theirs[name]
    ]


def check_prebuilt(manifest: Manifest, platform: Platform) -> None:
    """Refuse a prebuilt engine whose recorded platform is not this device's.

    Raises EngineKeyMismatch naming each part that differs (TensorRT version, GPU,
    compute capability), or saying that the manifest records none.
    """
    if manifest.format != "engine":
        return
    recorded = manifest.engine_key
    if not recorded:
        raise EngineKeyMismatch(
            f"{manifest.name} {manifest.version}: a prebuilt engine must record the platform it "
            f"was built for (manifest engine_key with {', '.join(PLATFORM_FIELDS)})"
        )
    missing = [name for name in PLATFORM_FIELDS if not recorded.get(name)]
    if missing:
        raise EngineKeyMismatch(f"{manifest.name} {manifest.version}: engine_key lacks "
                                f"{', '.join(missing)}")
    device = asdict(platform)
    differs = [
        f"{FIELD_LABELS[name]}: engine built for {recorded[name]!r}, this device has "
        f"{device[name]!r}"
        for name in PLATFORM_FIELDS
        if recorded[name] != device[name]
    ]
    if differs:
        raise EngineKeyMismatch(f"{manifest.name} {manifest.version}: prebuilt engine does not "
                                f"fit this device: {'; '.join(differs)}; ship the ONNX model "
                                "instead and let the device build its engine")


def _fsync_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Built engines under ``<store>/.engine-cache``, one per :class:`EngineKey`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def in_store(cls, store_root: Path) -> EngineCache:
        return cls(Path(store_root) / CACHE_DIR)

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest()}{ENGINE_SUFFIX}"

    def meta_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest()}{META_SUFFIX}"

    def timing_cache_path(self, platform: Platform) -> Path:
        return self.root / f"timing-{platform.slug()}.cache"

    def scratch_path(self, key: EngineKey) -> Path:
        """Where a build writes its plan before :meth:`store` moves it in place."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f"{TMP_PREFIX}{key.digest()}-{os.getpid()}{ENGINE_SUFFIX}"

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for ``key``, or None. A sidecar for another key is a miss."""
        engine, meta = self.engine_path(key), self.meta_path(key)
        if not (engine.is_file() and meta.is_file()):
            return None
        try:
            recorded = EngineKey.from_dict(json.loads(meta.read_text(encoding="utf-8"))["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("engine_cache_meta_unreadable", path=str(meta), error=str(exc))
            return None
        if recorded != key:
            log.warning("engine_cache_key_mismatch", path=str(meta),
                        differences=recorded.differences(key))
            return None
        return engine

    def store(self, key: EngineKey, built: Path, report: Mapping[str, Any]) -> Path:
        """Move the plan at ``built`` into the cache, then write its sidecar; atomic each."""
        self.root.mkdir(parents=True, exist_ok=True)
        engine = self.engine_path(key)
        with built.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(built, engine)
        meta = {"key": key.to_dict(), "build": dict(report)}
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        _fsync_write(self.meta_path(key), text.encode())
        log.info("engine_cached", path=str(engine), key=key.to_dict())
        return engine

    def keys(self) -> list[EngineKey]:
        """Keys of every complete entry."""
        found = []
        for meta in sorted(self.root.glob(f"*{META_SUFFIX}")):
            try:
                key = EngineKey.from_dict(json.loads(meta.read_text(encoding="utf-8"))["key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if self.engine_path(key).is_file():
                found.append(key)
        return found
