import math

import cv2
import numpy as np
import pytest

from agent.monitor.alarms import Judge
from agent.monitor.stats import (
    Binned,
    Hysteresis,
    Level,
    Thresholds,
    bin_counts,
    input_stats,
    js_distance,
    psi,
    quantile_edges,
    theil_sen,
)
from tests.support.monitor_support import blur, darken, video

# ----- PSI and Jensen-Shannon ------------------------------------------------------------------


def test_psi_of_a_distribution_against_itself_is_zero_whatever_the_scale():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)


def test_psi_matches_its_definition_worked_by_hand():
    # e = (0.5, 0.5), a = (0.9, 0.1): 0.4 ln(1.8) + (-0.4) ln(0.2)
    assert psi([5, 5], [9, 1]) == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2))


def test_psi_stays_finite_when_a_bin_is_empty_on_one_side():
    value = psi([0, 10], [10, 0], eps=1e-4)
    assert math.isfinite(value) and value > 10


@pytest.mark.parametrize(
    ("expected", "actual", "message"),
    [([], [], "non-empty"), ([1, 2], [1, 2, 3], "bins"), ([0, 0], [1, 1], "empty"),
     ([1, -1], [1, 1], ">= 0")],
)
def test_psi_names_what_is_wrong_with_its_input(expected, actual, message):
    with pytest.raises(ValueError, match=message):
        psi(expected, actual)


def test_js_distance_is_zero_for_equal_one_for_disjoint_and_exact_in_between():
    assert js_distance([1, 1], [2, 2]) == pytest.approx(0.0)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    # p = (1, 0), q = (0.5, 0.5), m = (0.75, 0.25)
    kl_p = math.log2(1 / 0.75)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert js_distance([1, 0], [1, 1]) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))


def test_js_distance_is_symmetric():
    p, q = [3, 1, 0, 6], [1, 1, 5, 1]
    assert js_distance(p, q) == pytest.approx(js_distance(q, p))


# ----- histograms ------------------------------------------------------------------------------


def test_quantile_edges_give_every_bin_the_same_share_of_the_sample():
    values = np.random.default_rng(1).normal(100, 20, 10_000)
    edges = quantile_edges(values, 10)
    counts = bin_counts(values, edges)
    assert len(edges) == 9 and counts.sum() == 10_000
    assert counts.min() >= 990 and counts.max() <= 1010


def test_values_outside_the_reference_range_fall_in_the_open_end_bins():
    edges = quantile_edges([1.0, 2.0, 3.0, 4.0], 4)
    assert bin_counts([-100.0, 100.0], edges).tolist() == [1, 0, 0, 1]


def test_a_constant_reference_gets_bins_below_at_and_above_its_value():
    edges = quantile_edges([0.0] * 50, 10)
    assert bin_counts([-1.0, 0.0, 0.0, 3.0], edges).tolist() == [1, 2, 1]


def test_tied_quantiles_of_discrete_data_merge():
    edges = quantile_edges([0] * 80 + [1] * 10 + [5] * 10, 10)
    assert list(edges) == sorted(set(edges))


def test_binned_refuses_counts_that_do_not_fit_its_edges():
    with pytest.raises(ValueError, match="2 edges need 3 counts"):
        Binned((1.0, 2.0), (1, 2))
    with pytest.raises(ValueError, match="increase"):
        Binned((2.0, 1.0), (1, 2, 3))
    assert Binned.of([0.5, 1.5, 1.7, 9.0], (1.0, 2.0)).counts == (1, 2, 1)


# ----- Theil-Sen -------------------------------------------------------------------------------


def test_theil_sen_recovers_a_line_exactly():
    xs = np.arange(20.0)
    assert theil_sen(xs, 3.0 * xs + 7.0) == pytest.approx(3.0)


def test_theil_sen_ignores_a_minority_of_wild_outliers():
    rng = np.random.default_rng(2)
    xs = np.arange(100.0)
    ys = 0.5 * xs + rng.normal(0, 0.1, 100)
    ys[rng.choice(100, 25, replace=False)] += rng.choice([-500.0, 500.0], 25)
    assert theil_sen(xs, ys) == pytest.approx(0.5, abs=0.05)
    assert abs(np.polyfit(xs, ys, 1)[0] - 0.5) > abs(theil_sen(xs, ys) - 0.5)


def test_theil_sen_subsamples_long_series_and_keeps_the_slope():
    xs = np.arange(5000.0)
    assert theil_sen(xs, -2.0 * xs, max_points=100) == pytest.approx(-2.0)


def test_theil_sen_needs_two_distinct_x():
    with pytest.raises(ValueError, match="two points"):
        theil_sen([1.0, 1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="one length"):
        theil_sen([1.0, 2.0], [2.0])


# ----- hysteresis ------------------------------------------------------------------------------


def test_a_value_hovering_at_the_alarm_bound_raises_once_and_does_not_flap():
    h = Hysteresis(Thresholds(alarm=0.25, warn=0.1, clear_margin=0.2))
    hovering = [0.24, 0.26, 0.24, 0.26, 0.23, 0.27, 0.21, 0.26]
    transitions = [t for t in (h.update(v) for v in hovering) if t is not None]
    assert [(t.previous, t.current) for t in transitions] == [(Level.OK, Level.WARN),
                                                             (Level.WARN, Level.ALARM)]
    assert h.level is Level.ALARM


def test_the_alarm_clears_only_below_the_clear_margin_and_reports_the_bound_crossed():
    h = Hysteresis(Thresholds(alarm=0.25, warn=0.1, clear_margin=0.2))
    assert h.update(0.3).current is Level.ALARM
    assert h.update(0.21) is None
    down = h.update(0.19)
    assert (down.previous, down.current) == (Level.ALARM, Level.WARN)
    assert down.threshold == pytest.approx(0.2) and not down.raised
    assert h.update(0.09) is None
    cleared = h.update(0.07)
    assert cleared.current is Level.OK and cleared.threshold == pytest.approx(0.08)


def test_confirm_needs_that_many_evaluations_in_a_row():
    h = Hysteresis(Thresholds(alarm=1.0, confirm=3))
    assert [h.update(v) for v in (2.0, 2.0, 0.5, 2.0, 2.0)] == [None] * 5
    raised = h.update(2.0)
    assert raised.current is Level.ALARM and raised.threshold == 1.0


def test_lower_is_worse_thresholds_for_ratios():
    h = Hysteresis(Thresholds(alarm=0.8, warn=0.9, clear_margin=0.1, higher_is_worse=False))
    assert h.update(0.95) is None
    assert h.update(0.7).current is Level.ALARM
    assert h.update(0.85) is None
    assert h.update(0.89).current is Level.WARN
    assert h.update(1.0).current is Level.OK


def test_not_a_number_changes_nothing():
    h = Hysteresis(Thresholds(alarm=1.0))
    assert h.update(float("nan")) is None and h.level is Level.OK


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"alarm": 0.1, "warn": 0.2}, "below alarm"), ({"alarm": float("inf")}, "finite"),
     ({"alarm": 1.0, "clear_margin": 1.0}, "clear_margin"),
     ({"alarm": 1.0, "confirm": 0}, "confirm"),
     ({"alarm": 0.9, "warn": 0.8, "higher_is_worse": False}, "above alarm")],
)
def test_thresholds_validate_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Thresholds(**kwargs)


def test_a_judge_reports_the_worst_measure_once_per_change_of_state():
    measures = {"psi": Thresholds(0.25, 0.1), "js": Thresholds(0.21, 0.13)}
    judge = Judge("drift", "brightness", measures)
    assert judge.evaluate({"psi": 0.05, "js": 0.05}) is None
    event = judge.evaluate({"psi": 0.3, "js": 0.15})
    assert (event.metric, event.measure) == ("brightness", "psi")
    assert (event.previous, event.state) == ("ok", "alarm")
    assert event.value == 0.3 and event.threshold == 0.25 and event.kind == "alarm_raised"
    assert event.severity == "alarm"
    assert judge.evaluate({"psi": 0.4, "js": 0.3}) is None
    cleared = judge.evaluate({"psi": 0.01, "js": 0.01})
    assert cleared.state == "ok" and cleared.kind == "alarm_cleared" and cleared.severity == "info"
    kind, severity, message, data = cleared.as_event()
    assert (kind, severity) == ("alarm_cleared", "info")
    assert "brightness" in message and data["metric"] == "brightness" and data["state"] == "ok"


# ----- input statistics ------------------------------------------------------------------------


def test_a_uniform_grey_image_has_its_value_as_brightness_and_no_contrast_or_detail():
    stats = input_stats(np.full((480, 640, 3), 77, dtype=np.uint8))
    assert stats.brightness == pytest.approx(77.0)
    assert stats.contrast == pytest.approx(0.0) and stats.sharpness == pytest.approx(0.0)


def test_darkening_and_blurring_a_real_frame_move_the_statistics_they_should():
    frame = video()[60]
    plain, dark, blurred = input_stats(frame), input_stats(darken(frame)), input_stats(blur(frame))
    luma = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert plain.brightness == pytest.approx(float(luma.mean()), rel=0.02)
    assert dark.brightness == pytest.approx(plain.brightness * 0.4, rel=0.05)
    assert blurred.brightness == pytest.approx(plain.brightness, rel=0.02)
    assert blurred.sharpness < plain.sharpness / 3
    assert dark.contrast < plain.contrast * 0.5


def test_input_stats_refuses_what_is_not_an_image():
    with pytest.raises(ValueError, match="uint8"):
        input_stats(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        input_stats(np.zeros((0, 4, 3), dtype=np.uint8))
