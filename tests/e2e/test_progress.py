"""Long model tools show how far they are: plain lines when piped, rich bars in a real terminal (tmux).

The real ``edge-agent`` runs as a subprocess on the demo's small classifier
(orientation), calibrating and profiling on the demo images.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.e2e.test_cli_local import edge_agent
from tests.support.agentproc import REPO
from tests.support.mosquitto import WAIT_S, poll
from tests.support.tmux import Tmux

CALIBRATION_FRAMES = 4
TOOL_S = 120.0


def progress_lines(stderr: str, stage: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{stage} ")]


def test_piped_quantize_writes_a_plain_line_per_calibrated_frame(tmp_path: Path, demo_dir: Path):
    done = edge_agent("model", "quantize", str(demo_dir / "models" / "orientation-0.0.11"), "--calib-images",
                      str(demo_dir / "images"), "--frames", str(CALIBRATION_FRAMES), "--target", "cpu",
                      "-o", str(tmp_path / "int8"))
    assert done.returncode == 0, done.stderr
    assert progress_lines(done.stderr, "calibrate") == ["calibrate 1/4  25.0%", "calibrate 2/4  50.0%",
                                                         "calibrate 3/4  75.0%", "calibrate 4/4 100.0%"]
    assert "\x1b[" not in done.stderr, "no terminal codes in a pipe"


def test_piped_profile_counts_its_frames_to_the_whole(tmp_path: Path, demo_dir: Path):
    model = shutil.copytree(demo_dir / "models" / "orientation-0.0.11", tmp_path / "orientation")
    done = edge_agent("model", "profile", str(model), "--images", str(demo_dir / "images"), "--frames", "100")
    assert done.returncode == 0, done.stderr
    lines = progress_lines(done.stderr, "profile")
    images = len(list((demo_dir / "images").iterdir()))
    assert lines[-1] == f"profile {images}/{images} 100.0%", "fewer images than asked for: the bar still ends full"


def test_in_a_terminal_quantize_and_profile_draw_bars(tmp_path: Path, demo_dir: Path):
    model = shutil.copytree(demo_dir / "models" / "orientation-0.0.11", tmp_path / "orientation")
    terminal = Tmux(width=160, height=40)
    quantize_rc, profile_rc = tmp_path / "quantize.rc", tmp_path / "profile.rc"
    try:
        terminal.run("quantize", [sys.executable, "-m", "agent", "model", "quantize", str(model), "--calib-images",
                                  str(demo_dir / "images"), "--frames", str(CALIBRATION_FRAMES), "--target", "cpu",
                                  "-o", str(tmp_path / "int8")], REPO, quantize_rc, env={"PYTHONPATH": str(REPO)})
        poll(quantize_rc.exists, TOOL_S, "quantize to end")
        screen = terminal.wait_for("quantize", "calibrate 4/4", "100%", "INT8 QDQ for cpu", history=True)
        assert quantize_rc.read_text().strip() == "0", screen
        assert "━" in screen and "calibrate 4/4 100.0%" not in screen, "a bar, not the piped line:\n" + screen

        terminal.run("profile", [sys.executable, "-m", "agent", "model", "profile", str(model), "--images",
                                 str(demo_dir / "images"), "--frames", "3"], REPO, profile_rc,
                     env={"PYTHONPATH": str(REPO)})
        poll(profile_rc.exists, WAIT_S, "profile to end")
        screen = terminal.wait_for("profile", "profile 3/3", "100%", "wrote the reference", history=True)
        assert profile_rc.read_text().strip() == "0", screen
        assert "━" in screen, screen
    finally:
        terminal.close()
