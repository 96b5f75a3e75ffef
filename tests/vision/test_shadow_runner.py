"""The shadow observer on the frame worker: it hands a sampled frame off and never waits for the candidate."""

from __future__ import annotations

import time

import numpy as np

from agent.models.shadow import ShadowGate, ShadowSpec
from agent.vision.pipeline import FrameResult
from agent.vision.shadow import ShadowRunner
from agent.vision.sources import Frame


def _result(index: int) -> FrameResult:
    frame = Frame(index, np.zeros((8, 8, 3), np.uint8), time.monotonic(), time.time(), "cam")
    return FrameResult(frame, "text-det", "v4", {"infer": 1.0}, None, True)


def test_sampled_frames_are_handed_off_and_a_busy_candidate_skips_instead_of_queueing():
    gate = ShadowGate()
    jobs = []
    runner = ShadowRunner(gate, jobs.append, None)
    runner(_result(0))
    assert jobs == []  # no run: nothing sampled
    gate.start("v6", ShadowSpec(min_agreement=0.9, min_frames=5, every_nth=2), serving=object())  # type: ignore[arg-type]
    runner(_result(0))
    runner(_result(1))  # not in the budget
    runner(_result(2))  # the candidate is still busy with frame 0: skipped, not queued
    assert len(jobs) == 1
    assert gate.report()["cameras"]["cam"]["skipped"] == 1


def test_a_job_that_finds_the_run_ended_does_nothing_and_frees_the_candidate():
    gate = ShadowGate()
    jobs = []
    runner = ShadowRunner(gate, jobs.append, None)
    gate.start("v6", ShadowSpec(min_agreement=0.9, min_frames=5, every_nth=1), serving=object())  # type: ignore[arg-type]
    runner(_result(0))
    gate.finish()
    jobs.pop()()
    assert runner.failures.count == 0
    gate.start("v7", ShadowSpec(min_agreement=0.9, min_frames=5, every_nth=1), serving=object())  # type: ignore[arg-type]
    runner(_result(1))
    assert len(jobs) == 1  # the slot was freed: the next sample is handed off
