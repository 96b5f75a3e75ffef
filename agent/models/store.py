"""The on-disk model store: ``<root>/<name>/<version>/`` with ``current`` and ``previous`` links.

Every change is atomic so that a kill -9 at any moment leaves a store the agent
can start from: a version is unpacked into a temporary folder, fsynced and renamed
into place; ``current``/``previous`` are symlinks replaced with ``rename(2)``. Every
folder whose entries change (the version's own subfolders, the model folder, the store
root when a model folder is created) is fsynced after the change, so that what a rename
or a new entry made is on disk before the store reports it done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.models.bootguard import write_json_atomic
from agent.models.errors import ModelError
from agent.models.manifest import MANIFEST_FILE, Manifest, ManifestError, check_name

__all__ = ["InstalledModel", "ModelStore", "StoreError"]

CURRENT = "current"
PREVIOUS = "previous"
TMP_PREFIX = ".tmp-"
WORK_DIR = ".work"
"""Scratch space for deployments (downloads, unpacking); emptied at every start."""
QUARANTINE_FILE = "quarantine.json"
"""Per model: versions that must not become current again without an explicit deploy."""


class StoreError(ModelError, RuntimeError):
    """The store cannot do what was asked (missing version, bad folder, disk full)."""


@dataclass(frozen=True)
class InstalledModel:
    manifest: Manifest
    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def version(self) -> str:
        return self.manifest.version


def _fsync_tree(folder: Path) -> None:
    """Files and subfolders, deepest first, then ``folder`` itself."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_symlink():
            continue
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def _make_dirs(folder: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every folder it creates, so the new entries last."""
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = keep

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name, "name")

    def work_dir(self) -> Path:
        """Where a deployment downloads and unpacks: same filesystem, so installs are renames."""
        folder = self.root / WORK_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def clean_partial(self) -> list[Path]:
        """Remove what an interrupted install or deployment left: temporary folders, downloads."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        work = self.root / WORK_DIR
        if work.is_dir():
            removed += list(work.iterdir())
            shutil.rmtree(work, ignore_errors=True)
        for model_dir in self.root.iterdir():
            if not model_dir.is_dir():
                continue
            for entry in model_dir.iterdir():
                if entry.name.startswith(TMP_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed

    def install(self, source: Path, *, activate: bool = True) -> InstalledModel:
        """Copy a folder holding ``manifest.json`` and the model into the store.

        With ``activate`` the new version becomes ``current`` and the old
        ``current`` becomes ``previous``. Installing a version that exists with
        the same files is a no-op; with other files it is an error.
        """
        manifest = Manifest.read(source / MANIFEST_FILE)
        if manifest.files:
            manifest.verify_files(source)
        else:
            manifest = manifest.with_hashes(source)
        if not (source / manifest.model_file).is_file():
            raise StoreError(f"{source}: model file {manifest.model_file!r} is missing")
        model_dir = self._dir(manifest.name)
        target = model_dir / manifest.version
        if target.exists():
            existing = Manifest.read(target / MANIFEST_FILE)
            if existing.with_hashes(target).files != manifest.files:
                raise StoreError(
                    f"{manifest.name} {manifest.version} is installed already with other files"
                )
        else:
            _make_dirs(model_dir)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
            try:
                for item in source.iterdir():
                    if item.name == MANIFEST_FILE:
                        continue
                    copy = shutil.copytree if item.is_dir() else shutil.copy2
                    copy(item, tmp / item.name)
                manifest.write(tmp / MANIFEST_FILE)
                _fsync_tree(tmp)
                tmp.rename(target)
                _fsync_dir(model_dir)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(f"installing {manifest.name} {manifest.version}: {exc}") from exc
        if activate:
            self.activate(manifest.name, manifest.version)
        return InstalledModel(manifest, target)

    def _link(self, name: str, which: str) -> str | None:
        link = self._dir(name) / which
        try:
            return os.readlink(link)
        except OSError:
            return None

    def _set_link(self, name: str, which: str, version: str) -> None:
        model_dir = self._dir(name)
        tmp = model_dir / f"{TMP_PREFIX}{which}-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(version, tmp)
        os.replace(tmp, model_dir / which)
        _fsync_dir(model_dir)

    def quarantine(self, name: str, version: str, reason: str, **detail: object) -> None:
        """Refuse ``version`` as current or previous until it, or another version, is deployed
        (``activate(..., explicit=True)``). Written atomically beside the versions."""
        entries = self.quarantined(name)
        entries[check_name(version, "version")] = {"reason": reason, **detail}
        write_json_atomic(self._dir(name) / QUARANTINE_FILE, entries)

    def quarantined(self, name: str) -> dict[str, dict[str, object]]:
        """Quarantined versions with why. The file is replaced atomically, so an unreadable
        one is not torn but damaged by hand; it counts as none rather than stop a start."""
        try:
            data = json.loads((self._dir(name) / QUARANTINE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v if isinstance(v, dict) else {"reason": str(v)} for k, v in data.items()}

    def _refuse_quarantined(self, name: str, version: str) -> None:
        entry = self.quarantined(name).get(version)
        if entry is not None:
            raise StoreError(f"{name} {version} is quarantined ({entry.get('reason')}); "
                             "deploy it again to lift the quarantine")

    def activate(self, name: str, version: str, *, explicit: bool = False) -> None:
        """Make ``version`` current; the old current becomes previous.

        A quarantined version is refused unless ``explicit`` (a deploy: an operator chose it);
        an explicit activation lifts every quarantine of the model, since whoever deploys
        has seen what is installed.
        """
        self.get(name, version)
        quarantine = self._dir(name) / QUARANTINE_FILE
        if explicit and quarantine.exists():
            quarantine.unlink()
            _fsync_dir(quarantine.parent)
        elif not explicit:
            self._refuse_quarantined(name, version)
        old = self._link(name, CURRENT)
        if old == version:
            return
        if old is not None:
            self._set_link(name, PREVIOUS, old)
        self._set_link(name, CURRENT, version)
        self.prune(name)

    def current_version(self, name: str) -> str | None:
        return self._link(name, CURRENT)

    def previous_version(self, name: str) -> str | None:
        return self._link(name, PREVIOUS)

    def get(self, name: str, version: str) -> InstalledModel:
        folder = self._dir(name) / check_name(version, "version")
        if not folder.is_dir():
            raise StoreError(f"{name} {version} is not installed")
        try:
            manifest = Manifest.read(folder / MANIFEST_FILE)
        except ManifestError as exc:
            raise StoreError(str(exc)) from exc
        return InstalledModel(manifest, folder)

    def current(self, name: str) -> InstalledModel:
        version = self.current_version(name)
        if version is None:
            raise StoreError(f"no current version of {name!r} in {self.root}")
        self._refuse_quarantined(name, version)
        return self.get(name, version)

    def previous(self, name: str) -> InstalledModel:
        version = self.previous_version(name)
        if version is None:
            raise StoreError(f"no previous version of {name!r} in {self.root}")
        self._refuse_quarantined(name, version)
        return self.get(name, version)

    def versions(self, name: str) -> list[str]:
        """Installed versions, oldest first by install time."""
        model_dir = self._dir(name)
        if not model_dir.is_dir():
            return []
        entries = [
            p for p in model_dir.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(TMP_PREFIX)
        ]
        return [p.name for p in sorted(entries, key=lambda p: p.stat().st_mtime)]

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version that is neither current nor previous."""
        if version in (self._link(name, CURRENT), self._link(name, PREVIOUS)):
            raise StoreError(f"{name} {version} is current or previous and cannot be removed")
        shutil.rmtree(self._dir(name) / check_name(version, "version"), ignore_errors=True)
        _fsync_dir(self._dir(name))

    def prune(self, name: str) -> list[str]:
        """Keep the newest ``keep`` versions, never current or previous."""
        pinned = {self._link(name, CURRENT), self._link(name, PREVIOUS)}
        versions = self.versions(name)
        removable = [v for v in versions if v not in pinned]
        excess = max(0, len(versions) - self.keep)
        removed = removable[:excess]
        for version in removed:
            shutil.rmtree(self._dir(name) / version, ignore_errors=True)
        if removed:
            _fsync_dir(self._dir(name))
        return removed
