"""distill --student channels:SHARE: the teacher's own graph, a share of its channels removed, refit and distilled.

Needs torch and onnx2torch (``make setup`` installs both); skipped without them. The run is short (a few
frames, a few steps): what is checked is that the path makes a smaller ONNX student that takes the teacher's
manifest, packs and passes deployment's goldens, and that the agreement and speed printed are measured on
the held-out views. How far a long run gets is a bench figure (docs/models.md, distill).
"""

from __future__ import annotations

import math
import re

import pytest

from agent.cli.main import main
from agent.models.bundle import unpack_bundle
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeploymentManager
from agent.models.store import ModelStore
from agent.tools.compare import compare_models
from agent.tools.distill import views
from agent.tools.errors import DistillError
from agent.tools.frames import read_video_frames
from agent.tools.modelref import ModelRef, resolve_model
from agent.tools.pack import build_manifest, pack_model
from agent.tools.student import channel_share

ORIENTATION = "orientation-0.0.11"
TRAIN_FRAMES = 4
EVAL_FRAMES = 2


@pytest.fixture(scope="module")
def onnx2torch():
    pytest.importorskip("torch")
    from agent.tools.recover import load_onnx2torch

    try:
        return load_onnx2torch()
    except DistillError as exc:
        pytest.skip(str(exc))


def test_a_channel_student_spec_names_a_share_and_anything_else_is_a_factory():
    assert channel_share("channels:0.5") == 0.5
    assert channel_share("channels:.25") == 0.25
    assert channel_share("agent.tools.examples:orientation_student") is None
    for bad in ("channels:1.0", "channels:0", "channels:half", "channels:0.5\n"):
        with pytest.raises(DistillError, match="channel share"):
            channel_share(bad)


def test_a_channel_student_of_the_classifier_packs_with_the_teachers_manifest_and_reports_measured_agreement(
        onnx2torch, tmp_path, demo_dir, capsys):
    teacher = resolve_model(demo_dir / "models" / ORIENTATION)
    out = tmp_path / "student.onnx"
    assert main(["model", "distill", "--teacher", str(teacher.folder), "--student", "channels:0.5",
                 "--video", str(demo_dir / "video.mp4"), "--frames", str(TRAIN_FRAMES), "--eval-frames",
                 str(EVAL_FRAMES), "--epochs", "1", "--batch-size", "8", "--lr", "1e-4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"student trained on {TRAIN_FRAMES * 4} frame views for 1 epochs" in printed
    channels = re.search(r"the teacher with (\d+) -> (\d+) channels in \d+ groups, (\d+) -> (\d+) parameters",
                         printed)
    assert channels is not None, printed
    assert int(channels[2]) < int(channels[1]) and int(channels[4]) < int(channels[3])
    assert out.stat().st_size < 0.9 * teacher.size_bytes

    # The printed agreement is the student's on the held-out frames and their turns, measured again here.
    printed_top1 = re.search(r"^  top-1 agreement ([\d.]+)%", printed, re.MULTILINE)
    printed_speed = re.search(r"speed B/A: x([\d.]+) \(median\)", printed)
    assert printed_top1 is not None and printed_speed is not None, printed
    assert f"classify: {EVAL_FRAMES * 4} frames" in printed
    frames = read_video_frames(demo_dir / "video.mp4", TRAIN_FRAMES + EVAL_FRAMES)
    held = [frames[1], frames[4]]  # what the CLI holds out: spread over what it read
    student = ModelRef(out, teacher.manifest)
    again = compare_models(teacher, student, [view for frame in held for view in views(frame, True)], threads=2)
    assert float(printed_top1[1]) == pytest.approx(again.agreement.value * 100, abs=0.05)
    assert math.isfinite(float(printed_speed[1])) and float(printed_speed[1]) > 0
    before = re.search(r"before distillation \(pruned and refit\): top-1 agreement ([\d.]+)%", printed)
    assert before is not None and 0.0 <= float(before[1]) <= 100.0, printed

    manifest = build_manifest(name="orientation", version="0.0.11-student", task="classify",
                              labels=list(teacher.manifest.head.labels), template=teacher.manifest,
                              license="Apache-2.0")
    packed = pack_model(out, manifest, tmp_path / "student.tar", profile_video=demo_dir / "video.mp4",
                        profile_frames=4, atol=0.05)
    unpack_bundle(packed.bundle, tmp_path / "staged")
    serving = load_serving(ModelStore(tmp_path / "engines").install(tmp_path / "staged"),
                           EngineOptions(threads=1, fuse_preprocessing=True))
    try:
        DeploymentManager.check_goldens(serving)
    finally:
        serving.engine.close()
