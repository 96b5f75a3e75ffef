"""The progress of long work for a person: a bar per stage on a terminal, a plain line per tenth when piped."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import agent.models.build as build
from agent.cli.build import main as build_cli
from agent.cli.control import artifact_sha256
from agent.cli.progress import ProgressBoard
from agent.core.progress import UNKNOWN_TOTAL
from agent.models.build import BuildProgress
from agent.runtime.base import EngineError


def plain_lines(feed: list[tuple[str, int, int, str]]) -> list[str]:
    stream = io.StringIO()
    with ProgressBoard(stream, live=False) as board:
        report = board.reporter()
        for stage, done, total, note in feed:
            report(stage, done, total, note=note)
    return stream.getvalue().splitlines()


def test_piped_a_long_stage_writes_a_line_per_tenth_not_per_step():
    lines = plain_lines([("recover", step, 200, "") for step in range(1, 201)])
    assert len(lines) == 11
    assert lines[0] == "recover 1/200   0.5%" and lines[-1] == "recover 200/200 100.0%"


def test_piped_each_stage_has_its_own_lines_and_a_note_goes_with_its_step():
    lines = plain_lines([("calibrate", 1, 2, ""), ("calibrate", 2, 2, ""), ("train", 1, 1, "loss 0.2500")])
    assert lines == ["calibrate 1/2  50.0%", "calibrate 2/2 100.0%", "train 1/1 loss 0.2500 100.0%"]


def test_piped_a_stage_of_unknown_length_writes_every_step_without_a_percent():
    lines = plain_lines([("search", 1, UNKNOWN_TOTAL, "0 float -> f1 0.800"),
                         ("search", 2, UNKNOWN_TOTAL, "4 float -> f1 0.950")])
    assert lines == ["search 1 0 float -> f1 0.800", "search 2 4 float -> f1 0.950"]


def test_on_a_terminal_a_stage_is_one_bar_that_ends_full():
    stream = io.StringIO()
    with ProgressBoard(stream, live=True) as board:
        report = board.reporter("model ")
        for done in range(1, 5):
            report("calibrate", done, 4)
    drawn = stream.getvalue()
    assert "model calibrate 4/4" in drawn and "100%" in drawn
    assert " 100.0%" not in drawn, "the plain line form is for pipes only"


def test_the_control_planes_read_of_an_artifact_reports_its_kibibytes(tmp_path: Path):
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"\0" * (3 * 1024 * 1024 + 512))
    seen: list[tuple[str, int, int, str]] = []
    artifact_sha256(artifact.as_uri(), lambda stage, done, total, note="": seen.append((stage, done, total, note)))
    assert seen[-1] == ("sha256 model.onnx", 3 * 1024, 3 * 1024, "KiB")
    assert [done for _, done, _, _ in seen] == sorted(done for _, done, _, _ in seen)


def test_an_engine_builds_phases_are_stages_filled_by_their_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]):
    def fake_build(model: Path, spec: object, cache: object, on_progress: build.Emit) -> None:
        on_progress(BuildProgress("parse", "start"))
        on_progress(BuildProgress("parse", "finish"))
        on_progress(BuildProgress("Building engine", "start", 0, 4))
        for step in range(1, 5):
            on_progress(BuildProgress("Building engine", "step", step))
        raise EngineError("the fake builder stops here")

    monkeypatch.setattr(build, "ensure_engine", fake_build)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    assert build_cli([str(model), "--store", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[:7] == ["parse 0/1   0.0%", "parse 1/1 100.0%", "Building engine 0/4   0.0%",
                       "Building engine 1/4  25.0%", "Building engine 2/4  50.0%", "Building engine 3/4  75.0%",
                       "Building engine 4/4 100.0%"]
    assert err[-1] == "edge-agent model build: the fake builder stops here"
