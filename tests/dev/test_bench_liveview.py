"""``make bench --only liveview`` on the real demo model and video, in a short run: it reports the
pipeline with the live view serving a real MJPEG client against off, and the client got JPEGs.
(Numbers only: nothing here asserts a timing.)"""

from __future__ import annotations

import re

import pytest

from agent.dev.bench import demo_fps
from agent.dev.bench_liveview import bench_liveview
from agent.models.store import ModelStore

pytestmark = pytest.mark.slow

FRAMES = 40
"""Enough for the client to connect and get a few JPEGs (the stream gives at most 5 a second)."""


def test_the_live_view_bench_reports_the_ratio_and_a_client_that_got_jpegs(demo_dir, tmp_path):
    lines: list[str] = []
    store = ModelStore(tmp_path / "engines")
    store.install(demo_dir / "models" / "text-det-v4")
    bench_liveview(demo_dir, store, FRAMES, 1, demo_fps(store, demo_dir, FRAMES), lines.append)
    text = "\n".join(lines)
    assert re.search(r"live view watched +\d+\.\d+ fps  ratio \d\.\d{3}", text), text
    round_line = next(line for line in lines if line.startswith("round 1:"))
    shown = re.search(r"(\d+) encoded, failures (\d+)", round_line)
    assert shown is not None and int(shown.group(1)) >= 1 and shown.group(2) == "0", round_line
    assert "one picture drawn and encoded" in text
