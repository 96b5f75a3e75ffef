"""compare: box matching, agreement and speed of two real models on the demo video, and its CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.cli.main import main
from agent.tools.compare import box_f1, compare_models, match_boxes
from agent.tools.errors import CompareError
from agent.tools.frames import read_video_frames
from agent.tools.modelref import resolve_model
from agent.vision.transforms import Detection


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.9, label: str = "text") -> Detection:
    return Detection((x1, y1, x2, y2), score, label)


def test_boxes_match_one_to_one_at_the_iou_threshold():
    reference = [det(0, 0, 10, 10), det(20, 20, 30, 30)]
    assert match_boxes(reference, [det(0, 0, 10, 10), det(1, 1, 10, 10, 0.5)], 0.5) == 1
    assert match_boxes(reference, [det(0, 0, 10, 5)], 0.5) == 1
    assert match_boxes(reference, [det(0, 0, 10, 4)], 0.5) == 0
    assert match_boxes(reference, [det(20, 20, 30, 30, label="other")], 0.5) == 0
    assert match_boxes([], [det(0, 0, 1, 1)], 0.5) == 0


def test_f1_counts_precision_and_recall_and_empty_sets_agree():
    assert box_f1(0, 0, 0) == (1.0, 1.0, 1.0)
    assert box_f1(0, 3, 0) == (0.0, 0.0, 0.0)
    precision, recall, f1 = box_f1(2, 4, 2)
    assert (precision, recall) == (1.0, 0.5) and f1 == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def frames(demo_dir):
    return read_video_frames(demo_dir / "video.mp4", 6)


def test_a_model_agrees_with_itself(demo_dir, frames):
    model = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    result = compare_models(model, model, frames)
    assert result.agreement.value == 1.0 and result.agreement.rel_error == 0.0
    assert result.a.speed.median_ms > 0 and result.b.speed.fps > 0
    assert result.a.size_bytes == (demo_dir / "models" / "orientation-0.0.11" / "model.onnx").stat().st_size


def test_two_text_detectors_are_compared_box_by_box(demo_dir, frames):
    v4 = resolve_model(demo_dir / "models" / "text-det-v4")
    v6 = resolve_model(demo_dir / "models" / "text-det-v6")
    seen = []
    result = compare_models(v4, v6, frames, progress=lambda stage, done, total, note="": seen.append(
        (stage, done, total)))
    agreement = result.agreement
    assert agreement.metric == "box_f1" and agreement.boxes_a and agreement.boxes_b
    assert 0 <= agreement.matched <= min(agreement.boxes_a, agreement.boxes_b)
    assert 0.0 <= agreement.value < 1.0, "two different detectors do not agree box for box"
    assert seen[-1] == ("compare", len(frames), len(frames))
    data = result.to_dict()
    assert data["speedup"] == pytest.approx(result.a.speed.median_ms / result.b.speed.median_ms)


def test_models_of_different_tasks_cannot_be_compared(demo_dir, frames):
    with pytest.raises(CompareError, match="classify model and B a text_detect model"):
        compare_models(resolve_model(demo_dir / "models" / "orientation-0.0.11"),
                       resolve_model(demo_dir / "models" / "text-det-v4"), frames)


def test_cli_takes_a_bare_onnx_manifest_from_the_other_folder_prints_json_and_progress(tmp_path, demo_dir, capsys):
    folder = demo_dir / "models" / "orientation-0.0.11"
    bare = tmp_path / "copy.onnx"
    shutil.copy(folder / "model.onnx", bare)
    video = demo_dir / "video.mp4"
    assert main(["model", "compare", str(folder), str(bare), "--video", str(video), "--frames", "10",
                 "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["agreement"]["value"] == 1.0 and data["frames"] == 10
    assert data["b"]["path"] == str(bare)
    progress = [line for line in captured.err.splitlines() if line.startswith("compare ")]
    assert progress[0] == "compare 1/10  10.0%" and progress[-1] == "compare 10/10 100.0%"
    assert len(progress) == 10, progress
    assert main(["model", "compare", str(bare), str(bare), "--video", str(video)]) == 1
    assert "needs a manifest" in capsys.readouterr().err
