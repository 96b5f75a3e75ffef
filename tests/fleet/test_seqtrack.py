"""Sequence gaps: found once, after a grace period, also when consumers each see part of a stream."""

from __future__ import annotations

from agent.fleet.seqtrack import Digest, Gap, Membership, SeqTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_jump_becomes_one_gap_after_the_grace_period() -> None:
    clock = Clock()
    tracker = SeqTracker(grace_s=3.0, clock=clock)
    for seq in (10, 11, 12):
        tracker.see("cam", "telemetry/latency", seq)
    clock.now += 3
    assert tracker.check() == []
    tracker.see("cam", "telemetry/latency", 15)
    assert tracker.check() == []
    clock.now += 2
    assert tracker.check() == []
    clock.now += 1
    assert tracker.check() == [Gap("cam", "telemetry/latency", 13, 14)]
    assert tracker.check() == []
    tracker.see("cam", "telemetry/latency", 16)
    clock.now += 10
    assert tracker.check() == []


def test_a_late_number_within_the_grace_period_is_no_gap() -> None:
    clock = Clock()
    tracker = SeqTracker(grace_s=3.0, clock=clock)
    tracker.see("cam", "events", 1)
    clock.now += 4
    tracker.check()
    tracker.see("cam", "events", 3)
    tracker.check()
    clock.now += 2
    tracker.see("cam", "events", 2)
    clock.now += 5
    assert tracker.check() == []


def test_two_consumers_splitting_a_stream_see_no_gap_once_they_exchange_digests() -> None:
    clock = Clock()
    a, b = SeqTracker(clock=clock), SeqTracker(clock=clock)
    digest_a, digest_b = Digest("a"), Digest("b")
    for seq in range(1, 41):
        tracker, digest = (a, digest_a) if seq % 2 else (b, digest_b)
        tracker.see("cam", "telemetry/health", seq)
        digest.add("cam", "telemetry/health", seq)
    alone = SeqTracker(clock=clock)
    for seq in range(1, 41, 2):
        alone.see("cam", "telemetry/health", seq)
    for peer_digest, tracker in ((digest_b.flush(), a), (digest_a.flush(), b)):
        _, items = Digest.parse(peer_digest)
        for device, suffix, seq in items:
            tracker.see(device, suffix, seq)
    clock.now += 10
    assert a.check() == [] and b.check() == []
    assert [(g.first, g.last) for g in alone.check()] == [(n, n) for n in range(2, 40, 2)]


def test_duplicates_and_restarts_are_counted_not_reported_as_gaps() -> None:
    clock = Clock()
    tracker = SeqTracker(clock=clock)
    for seq in (1, 2, 3):
        tracker.see("cam", "events", seq)
    clock.now += 5
    tracker.check()
    assert not tracker.see("cam", "events", 3)
    assert tracker.stale == 1
    tracker.see("cam", "events", 1)
    tracker.see("cam", "events", 2)
    assert tracker.restarts == 1
    clock.now += 5
    assert tracker.check() == []


def test_each_device_has_exactly_one_reporting_member() -> None:
    clock = Clock()
    views = {name: Membership(name, clock=clock) for name in ("a", "b", "c")}
    for membership in views.values():
        for other in views:
            membership.heard(other)
    devices = [f"cam-{i}" for i in range(60)]
    owners = {d: [name for name, m in views.items() if m.owns(d)] for d in devices}
    assert all(len(owner) == 1 for owner in owners.values())
    assert {owner[0] for owner in owners.values()} == {"a", "b", "c"}
    clock.now += 100
    assert all(views["a"].owns(d) for d in devices)


def test_a_digest_that_is_not_one_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="instance"):
        Digest.parse(b'{"seen": {}}')
