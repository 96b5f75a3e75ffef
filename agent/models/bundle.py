"""Bundles: a tar holding a model and its manifest.json; unpacked safely, packed reproducibly."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from .manifest import MANIFEST_FILE, Manifest, ManifestError

__all__ = ["BundleError", "pack_bundle", "stage_bare_model", "unpack_bundle"]

MAX_MEMBERS = 64
MAX_UNPACKED_BYTES = 4 << 30


class BundleError(ValueError):
    """A bundle is malformed or unsafe (paths escaping, links, too large, no manifest)."""


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or not parts:
        raise BundleError(f"bundle member {name!r} has an unsafe path")
    if not (member.isfile() or member.isdir()):
        raise BundleError(f"bundle member {name!r} is a link or device; only files are allowed")


def unpack_bundle(path: Path, dest: Path) -> Manifest:
    """Extract ``path`` into ``dest`` (created) after checking every member; returns the manifest."""
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"not a tar bundle: {exc}") from exc
    with archive:
        members = archive.getmembers()
        if len(members) > MAX_MEMBERS:
            raise BundleError(f"bundle has {len(members)} members, more than {MAX_MEMBERS}")
        total = 0
        for member in members:
            _check_member(member)
            total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(f"bundle unpacks to {total} bytes, more than {MAX_UNPACKED_BYTES}")
        if MANIFEST_FILE not in {m.name.lstrip("./") for m in members}:
            raise BundleError(f"bundle has no {MANIFEST_FILE}")
        dest.mkdir(parents=True, exist_ok=True)
        for member in members:
            target = dest / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise BundleError(f"bundle member {member.name!r} cannot be read")
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
    try:
        manifest = Manifest.read(dest / MANIFEST_FILE)
        manifest.verify_files(dest)
    except ManifestError as exc:
        raise BundleError(str(exc)) from exc
    if not (dest / manifest.model_file).is_file():
        raise BundleError(f"bundle lacks the model file {manifest.model_file!r} its manifest names")
    return manifest


def stage_bare_model(model: Path, dest: Path, template: Manifest, name: str, version: str) -> Manifest:
    """A bare model file becomes a store folder with the serving model's manifest, renamed."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / template.model_file
    shutil.move(str(model), target)
    manifest = template.model_copy(
        update={"name": name, "version": version, "files": {}, "golden": (), "reference": None,
                "source": "deployed as a bare model", "engine_key": None}
    ).with_hashes(dest)
    manifest.write(dest / MANIFEST_FILE)
    return manifest


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    archive.addfile(info, io.BytesIO(data))


def pack_bundle(folder: Path, out: Path) -> Manifest:
    """Write ``folder`` (manifest.json and the files it lists) to a tar with hashes refreshed."""
    manifest = Manifest.read(folder / MANIFEST_FILE).model_copy(update={"files": {}}).with_hashes(folder)
    with tarfile.open(out, "w") as archive:
        _add(archive, MANIFEST_FILE, manifest.to_json().encode())
        for rel in sorted(manifest.files):
            _add(archive, rel, (folder / rel).read_bytes())
    return manifest
