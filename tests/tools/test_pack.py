"""pack and inspect on the real demo models: goldens for both input paths, hashes, signatures, tampering."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from agent.cli.main import main
from agent.models.bundle import BundleError, pack_bundle, unpack_bundle
from agent.models.fetch import (
    FetchError,
    generate_keypair,
    load_public_key,
    verify_statement,
)
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeployFailed, DeploymentManager
from agent.models.manifest import Manifest
from agent.models.store import ModelStore
from agent.tools.errors import PackError
from agent.tools.inspection import format_inspection, inspect_bundle
from agent.tools.modelref import find_manifest
from agent.tools.pack import build_manifest, pack_model
from agent.wire import DeployCommand

PROFILE_FRAMES = 12


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "k.key", folder / "k.pub")
    return folder / "k.key", folder / "k.pub"


@pytest.fixture(scope="module")
def orientation_bundle(tmp_path_factory, demo_dir, keys):
    folder = demo_dir / "models" / "orientation-0.0.11"
    template = find_manifest(folder)
    manifest = build_manifest(name="orientation", version="0.0.12", task="classify", labels=["0", "90", "180", "270"],
                              template=template, license="Apache-2.0")
    out = tmp_path_factory.mktemp("bundle") / "orientation.tar"
    return pack_model(folder / "model.onnx", manifest, out, profile_video=demo_dir / "video.mp4",
                      profile_frames=PROFILE_FRAMES, extra_files=[folder / "LICENSE"], sign_key=keys[0])


def _rewrite(bundle: Path, out: Path, member: str, change) -> Path:
    with tarfile.open(bundle) as source, tarfile.open(out, "w") as target:
        for info in source.getmembers():
            data = source.extractfile(info).read()
            if info.name == member:
                data = change(data)
            copy = tarfile.TarInfo(info.name)
            copy.size = len(data)
            target.addfile(copy, io.BytesIO(data))
    return out


def test_bundle_holds_model_manifest_goldens_and_hashes_and_is_signed(orientation_bundle, keys):
    result = orientation_bundle
    manifest = result.manifest
    assert (manifest.name, manifest.version, manifest.task) == ("orientation", "0.0.12", "classify")
    assert manifest.head.labels == ("0", "90", "180", "270") and manifest.head.softmax is False
    assert set(manifest.files) == {"model.onnx", "LICENSE", "golden_0_in.npy", "golden_0_frame.npy",
                                   "golden_0_out.npy", "golden_1_in.npy", "golden_1_frame.npy", "golden_1_out.npy"}
    assert [g.input_file for g in manifest.golden] == ["golden_0_in.npy", "golden_0_frame.npy",
                                                       "golden_1_in.npy", "golden_1_frame.npy"]
    reference = manifest.reference
    assert reference is not None and reference["samples"] == PROFILE_FRAMES
    assert reference["model"] == {"name": "orientation", "version": "0.0.12", "sha256": manifest.files["model.onnx"]}
    assert reference["source"] == "video.mp4" and reference["outputs"]["classes"]
    statement = json.loads(result.signature.read_text())
    verify_statement(load_public_key(keys[1]), statement, name="orientation", version="0.0.12", format="bundle",
                     sha256=hashlib.sha256(result.bundle.read_bytes()).hexdigest())
    assert DeployCommand.model_validate({"id": "d", "name": "orientation", "version": "0.0.12", "url": "http://h/b",
                                         "sha256": statement["sha256"], "format": "bundle",
                                         "statement": statement}).statement is not None, \
        "BUNDLE.sig is the deploy command's statement field as it is"
    inspection = inspect_bundle(result.bundle, public_key=keys[1])
    assert inspection.ok and inspection.signature == "valid"
    assert {m.name for m in inspection.members} == set(manifest.files) | {"manifest.json"}
    text = format_inspection(inspection)
    assert "orientation 0.0.12" in text and "all files match" in text


def test_goldens_pass_the_deployment_check_on_the_float_and_the_fused_engine(orientation_bundle, tmp_path):
    result = orientation_bundle
    unpack_bundle(result.bundle, tmp_path / "staged")
    installed = ModelStore(tmp_path / "engines").install(tmp_path / "staged")
    for fused in (True, False):
        serving = load_serving(installed, EngineOptions(threads=1, fuse_preprocessing=fused))
        assert (serving.engine.inputs[0].dtype == np.uint8) is fused
        DeploymentManager.check_goldens(serving)
        serving.engine.close()
    frame = np.load(installed.path / "golden_0_frame.npy")
    assert frame.dtype == np.uint8 and frame.shape == (1, 224, 224, 3)


def test_a_wrong_golden_output_fails_the_check_for_the_fused_engine(orientation_bundle, tmp_path):
    result = orientation_bundle
    folder = tmp_path / "staged"
    unpack_bundle(result.bundle, folder)
    expected = np.load(folder / "golden_0_out.npy")
    np.save(folder / "golden_0_out.npy", expected[:, ::-1].copy())
    pack_bundle(folder, tmp_path / "rewritten.tar")
    unpack_bundle(tmp_path / "rewritten.tar", tmp_path / "again")
    installed = ModelStore(tmp_path / "engines").install(tmp_path / "again")
    serving = load_serving(installed, EngineOptions(threads=1, fuse_preprocessing=True))
    with pytest.raises(DeployFailed, match=r"golden_0_frame\.npy differs"):
        DeploymentManager.check_goldens(serving)
    serving.engine.close()


def test_a_tampered_bundle_is_refused_by_unpack_and_flagged_by_inspect(orientation_bundle, tmp_path, keys):
    result = orientation_bundle

    def flip(data: bytes) -> bytes:
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0xFF
        return bytes(changed)

    tampered = _rewrite(result.bundle, tmp_path / "tampered.tar", "model.onnx", flip)
    with pytest.raises(BundleError, match=r"model\.onnx: sha256"):
        unpack_bundle(tampered, tmp_path / "out")
    with pytest.raises(FetchError, match="sha256") as caught:
        verify_statement(load_public_key(keys[1]), json.loads(result.signature.read_text()), name="orientation",
                         version="0.0.12", format="bundle", sha256=hashlib.sha256(tampered.read_bytes()).hexdigest())
    assert caught.value.code == "statement_mismatch"
    (tmp_path / "tampered.tar.sig").write_text(result.signature.read_text())
    inspection = inspect_bundle(tampered, public_key=keys[1])
    assert not inspection.ok and inspection.signature == "invalid"
    assert [m.status for m in inspection.members if m.name == "model.onnx"] == ["mismatch"]
    assert main(["model", "inspect", str(tampered), "--pubkey", str(keys[1])]) == 1


def test_inspect_flags_an_unlisted_member_and_a_missing_signature(orientation_bundle, tmp_path, keys, capsys):
    result = orientation_bundle
    extra = tmp_path / "extra.tar"
    with tarfile.open(result.bundle) as source, tarfile.open(extra, "w") as target:
        for info in source.getmembers():
            target.addfile(info, source.extractfile(info))
        info = tarfile.TarInfo("payload.sh")
        info.size = 2
        target.addfile(info, io.BytesIO(b"hi"))
    inspection = inspect_bundle(extra, public_key=keys[1])
    assert inspection.signature == "missing"
    assert any("payload.sh: in the bundle but not in the manifest" in p for p in inspection.problems)
    assert main(["model", "inspect", str(result.bundle), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["manifest"]["version"] == "0.0.12" and data["signature"] == "not checked"


def test_pack_cli_for_the_text_detector_with_preprocessing_from_its_manifest(tmp_path, demo_dir, keys, capsys):
    folder = demo_dir / "models" / "text-det-v4"
    out = tmp_path / "td.tar"
    assert main(["model", "pack", str(folder / "model.onnx"), "--task", "text_detect", "--preprocess-from",
                 str(folder), "--version", "v4-packed", "--golden-frames", "1", "--profile-video",
                 str(demo_dir / "video.mp4"), "--profile-frames", "30", "--sign", str(keys[0]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text-det v4-packed" in printed and "td.tar.sig" in printed and "reference yes" in printed
    manifest = inspect_bundle(out, public_key=keys[1]).manifest
    assert manifest is not None and manifest.preprocess == Manifest.read(folder / "manifest.json").preprocess
    # --profile-frames: 30 frames spread over the 270 of the video (test_drift checks what a reference says).
    assert manifest.reference is not None and manifest.reference["samples"] == 30
    assert np.load(_member(out, "golden_0_frame.npy")).shape == (1, 480, 640, 3)


def _member(bundle: Path, name: str) -> io.BytesIO:
    with tarfile.open(bundle) as archive:
        return io.BytesIO(archive.extractfile(name).read())


def test_a_manifest_is_built_only_for_a_task_pack_knows():
    for task in ("recognize", "detect_yolo", "Classify"):
        with pytest.raises(PackError, match=f"task {task!r}: use one of classify, detect, text_detect"):
            build_manifest(name="o", version="1", task=task, labels=["a"])
    assert build_manifest(name="o", version="1", task="detect", labels=["a"]).head.kind == "detect_yolo"


def test_pack_refuses_a_manifest_that_does_not_fit_the_model(tmp_path, demo_dir, capsys):
    model = demo_dir / "models" / "orientation-0.0.11" / "model.onnx"
    with pytest.raises(PackError, match="3 labels"):
        manifest = build_manifest(name="o", version="1", task="classify", labels=["a", "b", "c"],
                                  template=find_manifest(demo_dir / "models" / "orientation-0.0.11"))
        pack_model(model, manifest, tmp_path / "x.tar", profile_video=demo_dir / "video.mp4")
    assert main(["model", "pack", str(model), "--task", "classify", "--size", "224x224", "--resize",
                 "short_side_crop", "--mean", "0.5,0.5", "--version", "1", "--profile-video",
                 str(demo_dir / "video.mp4"), "-o", str(tmp_path / "y.tar")]) == 1
    assert "--mean needs three values" in capsys.readouterr().err
    assert main(["model", "pack", str(model), "--task", "classify", "--profile-video",
                 str(demo_dir / "video.mp4"), "-o", str(tmp_path / "y.tar")]) == 1
    assert "give --version" in capsys.readouterr().err
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "y.tar").exists()
