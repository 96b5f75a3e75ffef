"""``edge-agent model profile`` through the real frame pipeline, on the demo models and video."""

import argparse
import os
import shutil
import subprocess
import sys
import time

import pytest

from agent.cli.profile import add_profile_parser
from agent.core.config import DriftSection
from agent.models.loader import EngineOptions, load_serving
from agent.models.manifest import MANIFEST_FILE, Manifest
from agent.models.store import InstalledModel
from agent.monitor.drift import DriftMonitor
from agent.monitor.latency import LatencyRecorder
from agent.monitor.reference import Reference
from agent.runtime.slot import EngineSlot
from agent.tools.profile import ProfileError, profile, video_frames
from agent.vision.pipeline import Pipeline
from agent.vision.sources import Frame
from agent.vision.summary import observe
from tests.support.monitor_support import DEMO, ORIENTATION, REPO, TEXT_DET, VIDEO, darken

PROFILE_FRAMES = 30


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent model")
    add_profile_parser(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(["profile", *argv])
    return args.handler(args)


@pytest.fixture
def text_det(tmp_path):
    return shutil.copytree(TEXT_DET, tmp_path / "text-det-v4")


def test_profile_writes_the_reference_into_the_manifest_and_the_hashes_stay_valid(text_det, capsys):
    assert run_cli(str(text_det), "--video", str(VIDEO), "--frames", str(PROFILE_FRAMES)) == 0
    manifest = Manifest.read(text_det / MANIFEST_FILE)
    manifest.verify_files(text_det)
    reference = Reference.parse(manifest.reference)
    assert reference.samples == PROFILE_FRAMES and reference.task == "text_detect"
    assert reference.model.sha256 == manifest.files["model.onnx"]
    assert reference.source == VIDEO.name
    assert sum(reference.outputs.count.counts) == PROFILE_FRAMES
    assert "wrote the reference" in capsys.readouterr().out


def test_edge_agent_model_profile_runs_as_a_command(text_det):
    completed = subprocess.run(
        [sys.executable, "-m", "agent", "model", "profile", str(text_det), "--video", str(VIDEO), "--frames", "5"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert Reference.parse(Manifest.read(text_det / MANIFEST_FILE).reference).samples == 5


def test_profile_of_the_classifier_from_an_image_folder(tmp_path):
    folder = shutil.copytree(ORIENTATION, tmp_path / "orientation")
    images = sorted(p for p in (DEMO / "images").iterdir() if p.suffix in (".png", ".jpg"))
    assert run_cli(str(folder), "--images", str(DEMO / "images")) == 0
    reference = Reference.parse(Manifest.read(folder / MANIFEST_FILE).reference)
    assert reference.samples == len(images)
    assert reference.outputs.classes.labels == ("0", "90", "180", "270")
    assert sum(reference.outputs.classes.counts) == len(images)


def live_results(folder, images):
    installed = InstalledModel(Manifest.read(folder / MANIFEST_FILE), folder)
    slot = EngineSlot()
    slot.swap(load_serving(installed, EngineOptions()))
    pipeline = Pipeline(None, slot, LatencyRecorder(16))
    try:
        return [pipeline.process(Frame(i, image, time.monotonic(), time.time(), "camera0"))
                for i, image in enumerate(images)]
    finally:
        slot.clear()


def test_the_profiled_reference_is_what_the_live_pipeline_measures(text_det):
    images = list(video_frames(VIDEO, PROFILE_FRAMES))
    reference = profile(text_det, images, source=VIDEO.name)
    window = DriftSection(drift_window=len(images), drift_min_samples=len(images))
    same = DriftMonitor(window, reference)
    for result in live_results(text_det, images):
        observe(same, result)
    metrics = same.snapshot()["metrics"]
    assert {m["psi"] for m in metrics.values()} == {0.0}
    dark = DriftMonitor(window, reference)
    for result in live_results(text_det, [darken(image) for image in images]):
        observe(dark, result)
    assert dark.snapshot()["metrics"]["brightness"]["state"] == "alarm"


def test_a_model_file_that_does_not_match_its_manifest_is_not_profiled(text_det):
    with (text_det / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ProfileError, match="sha256"):
        profile(text_det, video_frames(VIDEO, 2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--video", "missing.mp4"], "missing.mp4"), (["--images", "nowhere"], "nowhere")],
)
def test_a_missing_sample_is_an_error_naming_it(text_det, capsys, argv, message):
    assert run_cli(str(text_det), *argv) == 1
    assert message in capsys.readouterr().err


def test_a_folder_without_a_manifest_is_an_error_naming_it(tmp_path, capsys):
    assert run_cli(str(tmp_path), "--video", str(VIDEO)) == 1
    assert MANIFEST_FILE in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--video", "a.mp4", "--images", "b"], ["--video", "a.mp4", "--frames", "0"], []])
def test_bad_arguments_are_usage_errors(text_det, argv):
    with pytest.raises(SystemExit) as exited:
        run_cli(str(text_det), *argv)
    assert exited.value.code == 2
