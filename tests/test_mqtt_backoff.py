"""Backoff: capped exponential delays with jitter."""

from __future__ import annotations

import random

import pytest

from agent.mqtt.backoff import Backoff, backoff_delay


def test_delays_grow_by_the_factor_until_the_cap_without_jitter():
    backoff = Backoff(0.5, 4.0, factor=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_jitter_only_shortens_and_stays_within_its_fraction():
    backoff = Backoff(1.0, 8.0, jitter=0.25, rng=random.Random(7))
    for attempt in range(20):
        ceiling = min(8.0, 2.0**attempt)
        delay = backoff.next_delay()
        assert ceiling * 0.75 <= delay <= ceiling


def test_jitter_spreads_a_fleet():
    delays = {Backoff(1.0, 8.0, rng=random.Random(seed)).next_delay() for seed in range(10)}
    assert len(delays) == 10


def test_a_huge_attempt_count_stays_at_the_cap():
    assert backoff_delay(10_000, 0.5, 30.0, 2.0, 0.0, 0.0) == 30.0


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [((0.0, 1.0), "min_s"), ((2.0, 1.0), "min_s"), ((1.0, 2.0, 0.5), "factor")],
)
def test_invalid_bounds_are_refused(arguments, complaint):
    with pytest.raises(ValueError, match=complaint):
        Backoff(*arguments)


def test_invalid_draw_is_refused():
    with pytest.raises(ValueError, match="draw"):
        backoff_delay(0, 1.0, 2.0, 2.0, 0.1, 1.0)
