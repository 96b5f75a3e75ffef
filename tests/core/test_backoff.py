import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.backoff import Backoff


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_delays_double_from_min_and_stop_at_max() -> None:
    backoff = Backoff(0.5, 10.0, jitter=0.0)
    assert delays(backoff, 8) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff.attempts == 8


def test_reset_starts_again_at_min() -> None:
    backoff = Backoff(0.5, 10.0, jitter=0.0)
    delays(backoff, 5)
    backoff.reset()
    assert backoff.attempts == 0
    assert delays(backoff, 2) == [0.5, 1.0]


def test_jitter_takes_the_drawn_share_off_the_base_delay_and_never_passes_the_cap() -> None:
    draws = iter([0.0, 0.5, 1.0, 0.0])
    backoff = Backoff(1.0, 4.0, factor=2.0, jitter=0.2, rng=lambda: next(draws))
    assert delays(backoff, 4) == pytest.approx([1.0, 2.0 * 0.9, 4.0 * 0.8, 4.0])


def test_rng_outside_unit_interval_is_rejected() -> None:
    backoff = Backoff(1.0, 4.0, rng=lambda: 1.5)
    with pytest.raises(ValueError, match="rng must return"):
        backoff.next_delay()


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"min_s": 0.0, "max_s": 1.0}, "min_s"),
        ({"min_s": -1.0, "max_s": 1.0}, "min_s"),
        ({"min_s": 2.0, "max_s": 1.0}, "max_s"),
        ({"min_s": 1.0, "max_s": 2.0, "factor": 0.5}, "factor"),
        ({"min_s": 1.0, "max_s": 2.0, "jitter": 1.0}, "jitter"),
        ({"min_s": 1.0, "max_s": 2.0, "jitter": -0.1}, "jitter"),
    ],
)
def test_bad_settings_are_rejected_by_name(kwargs: dict[str, float], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Backoff(**kwargs)


@given(
    min_s=st.floats(0.001, 5.0),
    spread=st.floats(1.0, 100.0),
    factor=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 0.99),
    draws=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
)
def test_every_delay_lies_within_the_cap_and_bases_never_shrink(
    min_s: float, spread: float, factor: float, jitter: float, draws: list[float]
) -> None:
    max_s = min_s * spread
    shares = iter(draws)
    backoff = Backoff(min_s, max_s, factor=factor, jitter=jitter, rng=lambda: next(shares))
    previous_base = 0.0
    for share in draws:
        delay = backoff.next_delay()
        assert delay <= max_s * (1 + 1e-9)
        base = delay / (1 - jitter * share)
        assert min_s * (1 - 1e-9) <= base <= max_s * (1 + 1e-9)
        assert base >= previous_base * (1 - 1e-9)
        previous_base = base
