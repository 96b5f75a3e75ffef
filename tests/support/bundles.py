"""Bundles made by hand for validation tests: a raw manifest dict and raw tar members, nothing checked."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

DEMO_SOURCE = "text-det-v6"
"""The demo model the hand-made bundles carry (text-det v6: a real, small detector)."""


def demo_manifest(demo: Path, version: str = "v9", **overrides: Any) -> dict[str, Any]:
    """The demo model's manifest as a plain dict, re-versioned and with ``overrides`` applied."""
    data: dict[str, Any] = json.loads((demo / "models" / DEMO_SOURCE / "manifest.json").read_text())
    data.update(version=version, **overrides)
    return data


def demo_files(demo: Path) -> dict[str, bytes]:
    """The demo model's files but its manifest, by name (a fresh dict; the files are read once a process)."""
    return dict(_demo_files(demo))


@functools.cache
def _demo_files(demo: Path) -> dict[str, bytes]:
    folder = demo / "models" / DEMO_SOURCE
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o644
    return info


def write_tar(out: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(out, mode) as archive:  # type: ignore[call-overload]
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def manifest_bundle(demo: Path, out: Path, manifest: dict[str, Any], *, hashes: bool = True,
                    extra: dict[str, bytes] | None = None) -> Path:
    """A tar of the demo model's files and ``manifest`` (its ``files`` refreshed unless ``hashes`` is False)."""
    files = {**demo_files(demo), **(extra or {})}
    if hashes:
        manifest = {**manifest, "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    body = json.dumps(manifest).encode()
    members = [(member("manifest.json", body), body)]
    members += [(member(name, data), data) for name, data in files.items()]
    return write_tar(out, members)
