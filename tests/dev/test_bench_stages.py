"""``make bench --only stages`` on the real demo models and video, in a short run: it reports the
pipeline with the recognizer reading the published frames' text boxes against without, and its cost
per crop. (Numbers only: nothing here asserts a timing.)"""

from __future__ import annotations

import re

import pytest

from agent.dev.bench import demo_fps
from agent.dev.bench_stages import bench_second_stage
from agent.models.store import ModelStore
from tests.results.test_recognize import needs_rec

pytestmark = [pytest.mark.slow, needs_rec]

FRAMES = 20
"""Enough for the rate to let a few frames out on the handwriting at the video's start."""


def test_the_second_stage_bench_reports_the_ratio_and_its_cost_per_crop(demo_dir, tmp_path):
    lines: list[str] = []
    store = ModelStore(tmp_path / "engines")
    store.install(demo_dir / "models" / "text-det-v4")
    bench_second_stage(store, demo_dir, FRAMES, 1, demo_fps(store, demo_dir, FRAMES), tmp_path / "state",
                       lines.append)
    text = "\n".join(lines)
    assert re.search(r"results with text-rec +\d+\.\d+ fps  ratio \d\.\d{3}", text), text
    shown = re.search(r"read (\d+) frames, (\d+) crops, [\d.]+ ms/crop, \d+ ms/frame, failures 0", text)
    assert shown is not None and int(shown.group(1)) >= 1 and int(shown.group(2)) >= 1, text
