"""Bundles: a tar holding a model and its manifest.json; unpacked safely, packed reproducibly."""

from __future__ import annotations

import errno
import io
import lzma
import shutil
import tarfile
import zlib
from pathlib import Path

from agent.models.errors import ModelError
from agent.models.manifest import MANIFEST_FILE, Manifest, ManifestError, check_relative, confined

__all__ = ["BundleError", "pack_bundle", "stage_bare_model", "unpack_bundle", "unpack_limit"]

MAX_MEMBERS = 64
"""Members a bundle may hold (headers are read one at a time and the count stops here)."""
MAX_UNPACKED_BYTES = 4 << 30
"""The absolute cap on what one bundle may write: the largest models shipped are well under it."""
MAX_UNPACK_RATIO = 20
"""Unpacked bytes per artifact byte: model weights compress to about half at best, so 20x leaves
room for text and tar padding while 0.2 MB of gzip can no longer write 200 MB."""
MIN_UNPACK_ALLOWANCE = 1 << 20
"""Bytes any bundle may unpack to, whatever its size: a tiny bundle of text files is not a bomb."""
COPY_CHUNK = 1 << 20
UNREADABLE = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, UnicodeError)
"""What reading a malformed or truncated (compressed) tar raises."""


class BundleError(ModelError, ValueError):
    """A bundle is malformed or unsafe (paths escaping, links, too large, no manifest)."""


def unpack_limit(artifact_size: int) -> int:
    """The most bytes a bundle of ``artifact_size`` bytes may unpack to."""
    return min(MAX_UNPACKED_BYTES, max(MIN_UNPACK_ALLOWANCE, artifact_size * MAX_UNPACK_RATIO))


def _member_path(member: tarfile.TarInfo) -> str:
    """The member's normalised bundle-relative path; BundleError for anything unsafe."""
    name = member.name
    if name.startswith("/") or "\\" in name:
        raise BundleError(f"bundle member {name!r} has an unsafe path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise BundleError(f"bundle member {name!r} has an unsafe path")
    rel = "/".join(parts)
    try:
        check_relative(rel, "bundle member")
        rel.encode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise BundleError(f"bundle member {name!r} has an unsafe name") from exc
    if not (member.isfile() or member.isdir()) or member.issparse():
        raise BundleError(f"bundle member {name!r} is a link, device or sparse file; only files are allowed")
    return rel


class _Plan:
    """The members to extract, checked one header at a time: count, size, names, collisions."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.files: dict[str, tarfile.TarInfo] = {}
        self.dirs: set[str] = set()
        self.total = 0
        self.count = 0

    def add(self, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > MAX_MEMBERS:
            raise BundleError(f"bundle has more than {MAX_MEMBERS} members")
        rel = _member_path(member)
        parents = ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
        if rel in self.files or any(p in self.files for p in parents):
            raise BundleError(f"bundle member {member.name!r} collides with another member")
        if member.isdir():
            self.dirs.update([rel, *parents])
            return
        if rel in self.dirs:
            raise BundleError(f"bundle member {member.name!r} collides with a folder of the bundle")
        self.dirs.update(parents)
        self.total += member.size
        if self.total > self.limit:
            raise BundleError(f"bundle unpacks to more than {self.limit} bytes "
                              f"(at most {MAX_UNPACK_RATIO}x its size, {MAX_UNPACKED_BYTES} in all)")
        self.files[rel] = member


def _extract(archive: tarfile.TarFile, plan: _Plan, dest: Path) -> None:
    written = 0
    for rel in sorted(plan.dirs):
        (dest / rel).mkdir(parents=True, exist_ok=True)
    for rel, member in plan.files.items():
        source = archive.extractfile(member)
        if source is None:
            raise BundleError(f"bundle member {member.name!r} cannot be read")
        with source, (dest / rel).open("xb") as out:
            while chunk := source.read(COPY_CHUNK):
                written += len(chunk)
                if written > plan.limit:  # headers lied about sizes: stop writing all the same
                    raise BundleError(f"bundle unpacks to more than {plan.limit} bytes")
                out.write(chunk)


def unpack_bundle(path: Path, dest: Path) -> Manifest:
    """Extract ``path`` into ``dest`` (created) after checking every member; returns the manifest.

    Members are checked as their headers are read (count, names, types, collisions,
    the total size against ``unpack_limit``), then the manifest is checked against
    the files (``Manifest.check_bundle``): every refusal is a BundleError naming
    the member or the manifest field.
    """
    plan = _Plan(unpack_limit(path.stat().st_size))
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                plan.add(member)
            if MANIFEST_FILE not in plan.files:
                raise BundleError(f"bundle has no {MANIFEST_FILE}")
            dest.mkdir(parents=True, exist_ok=True)
            _extract(archive, plan, dest)
    except BundleError:
        raise
    except UNREADABLE as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise BundleError(f"not a readable tar bundle: {type(exc).__name__}: {exc}") from exc
    try:
        manifest = Manifest.read(dest / MANIFEST_FILE)
        manifest.check_bundle(dest)
    except ManifestError as exc:
        raise BundleError(f"{MANIFEST_FILE}: {str(exc).removeprefix(f'{dest / MANIFEST_FILE}: ')}") from exc
    return manifest


def stage_bare_model(model: Path, dest: Path, template: Manifest, name: str, version: str,
                     template_folder: Path | None = None) -> Manifest:
    """A bare model file becomes a store folder with the serving model's manifest, renamed, and the
    files its head reads (a recognizer's dictionary) copied from the serving model's ``template_folder``."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / template.model_file
    shutil.move(str(model), target)
    if template_folder is not None and template.head.dictionary is not None:
        kept = dest / template.head.dictionary
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(confined(template_folder, template.head.dictionary, "head.dictionary"), kept)
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
