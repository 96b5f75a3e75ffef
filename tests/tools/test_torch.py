"""export and distill: PyTorch -> ONNX checked on ONNX Runtime, and a student trained on the orientation teacher.

Needs the optional torch extra; skipped cleanly without it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from agent.cli.main import main  # noqa: E402
from agent.runtime.onnxrt import OnnxRuntimeEngine  # noqa: E402
from agent.tools.distill import DistillOptions, distill  # noqa: E402
from agent.tools.errors import ExportError  # noqa: E402
from agent.tools.examples import orientation_student, tiny_classifier  # noqa: E402
from agent.tools.export import export_onnx, load_torch_model, parse_shape  # noqa: E402
from agent.tools.frames import read_video_frames  # noqa: E402
from agent.tools.modelref import resolve_model  # noqa: E402


def test_exported_model_reproduces_torch_on_onnx_runtime_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(1)
    model = tiny_classifier().eval()
    result = export_onnx(model, (1, 3, 32, 32), tmp_path / "tiny.onnx", opset=13, dynamic_batch=True)
    assert result.opset == 13 and result.max_abs_error < 1e-4
    exported = onnx.load(str(result.path))
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["edge_agent.opset"] == "13" and props["edge_agent.input_shape"] == "1x3x32x32"
    batch = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(batch).numpy()
    engine = OnnxRuntimeEngine.load(result.path, threads=1)
    assert engine.inputs[0].shape[0] is None
    got = engine.infer({"x": batch.numpy()})["output"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_export_cli_from_a_factory_and_from_a_torchscript_file(tmp_path, capsys):
    assert main(["model", "export", "agent.tools.examples:tiny_classifier", "--input-shape", "1x3x32x32",
                 "--opset", "17", "-o", str(tmp_path / "a.onnx")]) == 0
    assert "opset 17" in capsys.readouterr().out
    scripted = torch.jit.script(tiny_classifier().eval())
    scripted.save(str(tmp_path / "tiny.pt"))
    assert main(["model", "export", str(tmp_path / "tiny.pt"), "--input-shape", "2x3x32x32",
                 "-o", str(tmp_path / "b.onnx")]) == 0
    assert OnnxRuntimeEngine.load(tmp_path / "b.onnx").inputs[0].shape == (2, 3, 32, 32)


def test_bad_export_requests_are_named(tmp_path, capsys):
    with pytest.raises(ExportError, match="joined by 'x'"):
        parse_shape("1,3,32,32")
    with pytest.raises(ExportError, match="cannot import"):
        load_torch_model("agent.tools.nowhere:factory")
    with pytest.raises(ExportError, match="no such model file"):
        load_torch_model(str(tmp_path / "missing.pt"))
    torch.save({"weight": torch.zeros(1)}, tmp_path / "state.pt")
    assert main(["model", "export", str(tmp_path / "state.pt"), "--input-shape", "1x3",
                 "-o", str(tmp_path / "x.onnx")]) == 1
    assert "not a module" in capsys.readouterr().err


def test_distill_trains_a_student_on_the_teachers_outputs_exports_and_compares_it(tmp_path, demo_dir):
    teacher = resolve_model(demo_dir / "models" / "orientation-0.0.11")
    frames = read_video_frames(demo_dir / "video.mp4", 8)
    seen: list[tuple[int, int, str]] = []
    result = distill(teacher, orientation_student(), frames[::2], tmp_path / "student.onnx",
                     DistillOptions(epochs=2, batch_size=8), eval_frames=frames[1::2],
                     progress=lambda stage, done, total, note="": seen.append((done, total, stage)))
    assert result.samples == 16, "each training frame and its three turns"
    assert len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)
    assert seen == [(1, 2, "train"), (2, 2, "train")]
    engine = OnnxRuntimeEngine.load(result.path)
    assert engine.outputs[0].shape[1] == 4
    probabilities = engine.infer({"x": np.zeros((1, 3, 224, 224), np.float32)})["output"]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5), "ends in a softmax like the teacher"
    comparison = result.comparison
    assert comparison is not None and comparison.frames == 16, "each held-out frame and its three turns"
    assert comparison.b.size_bytes < comparison.a.size_bytes / 10
    print(f"\nstudent after 2 epochs: top-1 agreement {comparison.agreement.value:.0%}, "
          f"x{comparison.speedup:.1f} faster, {comparison.b.size_bytes / 1e3:.0f} kB")
