"""The monitors' own cost per frame: measured, reported, never asserted against a time."""

import math
from dataclasses import asdict

import pytest

from agent.dev.monitor_cost import measure_monitor_cost, time_monitors
from agent.monitor.reference import ReferenceBuilder
from agent.vision.summary import summarize
from tests.support.monitor_support import TEXT_DET, VIDEO, model_results


def test_time_monitors_replays_real_results_through_every_monitor():
    frame_results = model_results(TEXT_DET, "original", range(0, 270, 9))
    builder = ReferenceBuilder("text_detect", ("text",))
    for result in frame_results:
        builder.observe(summarize(result))
    reference = builder.build("text-det", "v4", "a" * 64, VIDEO.name)
    cost = time_monitors(frame_results, reference, frames=300)
    assert cost.frames == 300
    assert all(math.isfinite(v) and v > 0 for v in asdict(cost).values())
    assert cost.per_frame_us_p95 >= cost.per_frame_us_median
    assert "us" in cost.lines()[0]


def test_time_monitors_needs_results():
    with pytest.raises(ValueError, match="at least one"):
        time_monitors([], None)


def test_measure_monitor_cost_on_the_demo_model_and_video():
    cost = measure_monitor_cost(VIDEO, TEXT_DET, frames=40)
    assert cost.frames == 40 and cost.per_frame_us_median > 0
