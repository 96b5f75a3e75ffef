import os
import shutil
from pathlib import Path

import pytest

from agent.models.manifest import Manifest, ManifestError, check_name
from agent.models.store import ModelStore, StoreError


@pytest.fixture
def v4(demo_dir):
    return demo_dir / "models" / "text-det-v4"


def _version_of(src, tmp_path, version):
    folder = tmp_path / f"src-{version}"
    shutil.copytree(src, folder)
    manifest = Manifest.read(folder / "manifest.json").model_copy(update={"version": version, "files": {}})
    manifest.write(folder / "manifest.json")
    return folder


def test_install_activates_and_keeps_previous(tmp_path, v4):
    store = ModelStore(tmp_path / "engines", keep=3)
    store.install(_version_of(v4, tmp_path, "a"))
    store.install(_version_of(v4, tmp_path, "b"))
    assert store.current_version("text-det") == "b"
    assert store.previous_version("text-det") == "a"
    assert store.current("text-det").model_path.is_file()


def test_old_versions_are_pruned_but_never_current_or_previous(tmp_path, v4):
    store = ModelStore(tmp_path / "engines", keep=2)
    for version in ("a", "b", "c", "d"):
        store.install(_version_of(v4, tmp_path, version))
    assert store.versions("text-det") == ["c", "d"]
    assert store.previous_version("text-det") == "c"


def test_tampered_source_is_refused(tmp_path, v4):
    folder = _version_of(v4, tmp_path, "a")
    manifest = Manifest.read(folder / "manifest.json").with_hashes(folder)
    manifest.write(folder / "manifest.json")
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(ManifestError, match=r"model\.onnx: sha256"):
        ModelStore(tmp_path / "engines").install(folder)


def test_interrupted_install_leaves_no_partial_version(tmp_path, v4):
    store = ModelStore(tmp_path / "engines")
    store.install(_version_of(v4, tmp_path, "a"))
    partial = tmp_path / "engines" / "text-det" / ".tmp-crashed"
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    assert store.clean_partial() == [partial]
    assert store.versions("text-det") == ["a"]


def test_a_download_cut_off_by_a_crash_is_removed_at_the_next_start(tmp_path, v4):
    store = ModelStore(tmp_path / "engines")
    store.install(_version_of(v4, tmp_path, "a"))
    deployment = store.work_dir() / ".deploy-crashed"
    deployment.mkdir()
    (deployment / ".download-x").write_bytes(b"half an artifact")
    assert store.clean_partial() == [deployment]
    assert not (tmp_path / "engines" / ".work").exists()
    assert store.versions("text-det") == ["a"]


def test_links_are_replaced_atomically(tmp_path, v4):
    store = ModelStore(tmp_path / "engines")
    store.install(_version_of(v4, tmp_path, "a"))
    link = tmp_path / "engines" / "text-det" / "current"
    assert os.readlink(link) == "a"
    store.install(_version_of(v4, tmp_path, "b"))
    assert os.readlink(link) == "b"
    leftovers = [p.name for p in link.parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_unknown_version_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="text-det x is not installed"):
        ModelStore(tmp_path).get("text-det", "x")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "", ".hidden", "a" * 65, "x\0"])
def test_names_that_could_escape_the_store_are_refused(bad):
    with pytest.raises(ValueError, match="must be 1-64"):
        check_name(bad)


def test_install_and_activate_fsync_every_folder_whose_entries_changed(tmp_path, v4, monkeypatch):
    source = _version_of(v4, tmp_path, "a")
    (source / "golden").mkdir()
    (source / "golden" / "frame.txt").write_text("x")
    real_fsync = os.fsync
    synced: list[str] = []

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = tmp_path / "store" / "engines"
    store = ModelStore(root)
    installed = store.install(source)
    for folder in (tmp_path / "store", root, root / "text-det"):
        assert str(folder) in synced, f"{folder} was not fsynced"
    # The version is written and fsynced under a temporary name, then renamed into place.
    below = [Path(p).relative_to(root / "text-det").parts for p in synced
             if Path(p).is_relative_to(root / "text-det")]
    unpacked = {parts[1:] for parts in below if parts and parts[0].startswith(".tmp-")}
    for entry in ((), ("golden",), ("golden", "frame.txt"), ("model.onnx",)):
        assert entry in unpacked, f"{'/'.join(entry) or 'the version folder'} was not fsynced"
    assert installed.path.is_dir()
    synced.clear()
    store.install(_version_of(v4, tmp_path, "b"))
    assert synced.count(str(root / "text-det")) >= 3, "the rename into place and both links"
