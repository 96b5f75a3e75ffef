"""The arithmetic of the signals: histograms, PSI, Jensen-Shannon, Theil-Sen, input statistics.

Pure functions and small value types, no I/O and no clocks, so that every
number a monitor reports can be checked by hand. ``Hysteresis`` turns a noisy
measure into ``ok | warn | alarm`` states that change only when the measure has
clearly crossed a bound, and reports the crossings, nothing else.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from agent.wire import SignalState

__all__ = [
    "PSI_EPSILON",
    "STATS_WIDTH",
    "THEIL_SEN_MAX_POINTS",
    "Binned",
    "Hysteresis",
    "InputStats",
    "Level",
    "Thresholds",
    "Transition",
    "bin_counts",
    "input_stats",
    "js_distance",
    "psi",
    "quantile_edges",
    "theil_sen",
]

PSI_EPSILON = 1e-4
"""Proportion that stands in for an empty bin, so that PSI stays finite."""
STATS_WIDTH = 160
"""Input statistics are computed on a luma image this wide: every other pixel of a 2x wider
nearest-neighbour sample, averaged 2x2. Sampling alone would alias (a textured scene panning by
a pixel would change its contrast); averaging a full-resolution frame would cost ten times more."""
MIN_STATS_HEIGHT = 8
THEIL_SEN_MAX_POINTS = 200
"""Theil-Sen looks at every pair of points: above this many, an evenly spaced subsample."""
CONSTANT_EDGE_STEP = 1e-9
"""A reference whose values are all equal gets the bins below / equal / above that value."""


class InputStats(NamedTuple):
    brightness: float
    """Mean luma, 0..255."""
    contrast: float
    """Standard deviation of luma, 0..~128."""
    sharpness: float
    """Variance of the Laplacian of luma (4-neighbour, on the sample), luma units squared."""


def input_stats(image: np.ndarray) -> InputStats:
    """Brightness, contrast and sharpness of a BGR (or grey) uint8 image, on a small sample."""
    colour = image.ndim == 3 and image.shape[2] == 3
    if not (colour or image.ndim == 2) or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"input_stats needs a non-empty HxWx3 or HxW uint8 image, "
                         f"got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    sample_w = min(width, STATS_WIDTH)
    sample_h = min(height, max(MIN_STATS_HEIGHT, round(sample_w * height / width)))
    coarse = (min(width, 2 * sample_w), min(height, 2 * sample_h))
    picked = cv2.resize(image, coarse, interpolation=cv2.INTER_NEAREST)
    grey = cv2.cvtColor(picked, cv2.COLOR_BGR2GRAY) if picked.ndim == 3 else picked
    luma = cv2.resize(grey, (sample_w, sample_h), interpolation=cv2.INTER_AREA)
    mean, std = cv2.meanStdDev(luma)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_16S))
    return InputStats(float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0]) ** 2)


# ----- histograms ----------------------------------------------------------------------------


def quantile_edges(values: Sequence[float] | np.ndarray, bins: int) -> tuple[float, ...]:
    """Interior bin edges at the quantiles of ``values`` (equal reference mass per bin).

    Edges are the ``bins - 1`` cut points; the first and last bins are open-ended,
    so no live value ever falls outside. Tied quantiles (discrete data) merge.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("quantile_edges needs at least one value")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if not np.all(np.isfinite(data)):
        raise ValueError("quantile_edges needs finite values")
    low, high = float(data.min()), float(data.max())
    if low == high:
        return (low, low + max(abs(low) * CONSTANT_EDGE_STEP, CONSTANT_EDGE_STEP))
    cuts = np.quantile(data, np.arange(1, bins) / bins)
    return tuple(float(c) for c in np.unique(cuts))


def bin_counts(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts in each of the ``len(edges) + 1`` bins (bin i is [edge[i-1], edge[i]))."""
    data = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), data, side="right")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


@dataclass(frozen=True)
class Binned:
    """A fixed-bin histogram: interior ``edges`` and ``len(edges) + 1`` counts."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} counts, "
                             f"got {len(self.counts)}")
        if any(b <= a for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)):
            raise ValueError("histogram edges must increase strictly")
        if any(c < 0 for c in self.counts):
            raise ValueError("histogram counts must be >= 0")

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> Binned:
        return cls(tuple(float(e) for e in edges), tuple(int(c) for c in bin_counts(values, edges)))


def _proportions(counts: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    data = np.asarray(counts, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D histogram")
    if np.any(data < 0) or not np.all(np.isfinite(data)):
        raise ValueError(f"{what} must hold finite counts >= 0")
    total = data.sum()
    if total <= 0:
        raise ValueError(f"{what} is empty (no counts)")
    return np.asarray(data / total, dtype=np.float64)


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    eps: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or proportions).

    ``sum((a - e) * ln(a / e))`` over the bins, empty bins taken as ``eps``. 0 means
    the same distribution; 0.1 is commonly read as a moderate shift, 0.25 a large one.
    """
    e = _proportions(expected, "expected")
    a = _proportions(actual, "actual")
    if e.shape != a.shape:
        raise ValueError(f"expected has {e.size} bins, actual {a.size}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    e = np.maximum(e, eps)
    a = np.maximum(a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2): 0 same, 1 disjoint."""
    pp = _proportions(p, "p")
    qq = _proportions(q, "q")
    if pp.shape != qq.shape:
        raise ValueError(f"p has {pp.size} bins, q {qq.size}")
    m = (pp + qq) / 2.0

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    divergence = (kl(pp) + kl(qq)) / 2.0
    return min(1.0, math.sqrt(max(0.0, divergence)))


# ----- robust slope --------------------------------------------------------------------------


def theil_sen(
    xs: Sequence[float] | np.ndarray,
    ys: Sequence[float] | np.ndarray,
    max_points: int = THEIL_SEN_MAX_POINTS,
) -> float:
    """The median of the slopes between all pairs of points: a trend that outliers do not move."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"theil_sen needs two 1-D sequences of one length, got {x.shape}, {y.shape}")
    if x.size > max_points:
        keep = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
        x, y = x[keep], y[keep]
    i, j = np.triu_indices(x.size, k=1)
    dx = x[j] - x[i]
    usable = dx != 0
    if not np.any(usable):
        raise ValueError("theil_sen needs at least two points with different x")
    return float(np.median((y[j] - y[i])[usable] / dx[usable]))


# ----- states with hysteresis ----------------------------------------------------------------


class Level(enum.IntEnum):
    OK = 0
    WARN = 1
    ALARM = 2

    @property
    def label(self) -> SignalState:
        """The state on the wire."""
        return SignalState(self.name.lower())


@dataclass(frozen=True)
class Thresholds:
    """Where a measure enters ``warn`` and ``alarm``, and how far back it must come to leave.

    A state is entered when the measure is beyond its bound (above it, or below it
    when ``higher_is_worse`` is false) for ``confirm`` evaluations in a row; it is
    left when the measure is back inside the bound by ``clear_margin`` (a fraction
    of the bound), so a measure hovering at a bound does not flap.
    """

    alarm: float
    warn: float | None = None
    clear_margin: float = 0.2
    higher_is_worse: bool = True
    confirm: int = 1

    def __post_init__(self) -> None:
        bounds = (self.alarm,) if self.warn is None else (self.warn, self.alarm)
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"thresholds must be finite, got {bounds}")
        if self.warn is not None and self._worse(self.warn, self.alarm):
            side = "below" if self.higher_is_worse else "above"
            raise ValueError(f"warn {self.warn} must be {side} alarm {self.alarm}")
        if not 0 <= self.clear_margin < 1:
            raise ValueError(f"clear_margin must be in [0, 1), got {self.clear_margin}")
        if self.confirm < 1:
            raise ValueError(f"confirm must be >= 1, got {self.confirm}")

    def _worse(self, value: float, bound: float) -> bool:
        return value > bound if self.higher_is_worse else value < bound

    def enter(self, level: Level) -> float | None:
        return {Level.WARN: self.warn, Level.ALARM: self.alarm}.get(level)

    def clear(self, level: Level) -> float | None:
        bound = self.enter(level)
        if bound is None:
            return None
        step = self.clear_margin * abs(bound)
        return bound - step if self.higher_is_worse else bound + step

    def entered(self, value: float) -> Level:
        """The worst level whose bound ``value`` is beyond."""
        if self._worse(value, self.alarm):
            return Level.ALARM
        if self.warn is not None and self._worse(value, self.warn):
            return Level.WARN
        return Level.OK

    def holds(self, value: float, level: Level) -> bool:
        """Whether ``value`` is not yet back inside ``level``'s clear bound."""
        bound = self.clear(level)
        return bound is not None and not (
            value < bound if self.higher_is_worse else value > bound
        )


@dataclass(frozen=True)
class Transition:
    previous: Level
    current: Level
    value: float
    threshold: float
    """The bound that was crossed: an enter bound going up, a clear bound going down."""

    @property
    def raised(self) -> bool:
        return self.current > self.previous


class Hysteresis:
    """``ok | warn | alarm`` for one measure; ``update()`` returns a Transition only on a change."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.level = Level.OK
        self._streak = 0

    def reset(self) -> None:
        self.level = Level.OK
        self._streak = 0

    def update(self, value: float) -> Transition | None:
        if not math.isfinite(value):
            return None
        t = self.thresholds
        target = t.entered(value)
        if target > self.level:
            self._streak += 1
            if self._streak < t.confirm:
                return None
            self._streak = 0
            bound = t.enter(target)
            assert bound is not None
            return self._move(target, value, bound)
        self._streak = 0
        if self.level is Level.OK or t.holds(value, self.level):
            return None
        previous_clear = t.clear(self.level)
        assert previous_clear is not None
        lower = Level.WARN if self.level is Level.ALARM and t.holds(value, Level.WARN) else Level.OK
        return self._move(lower, value, previous_clear)

    def _move(self, level: Level, value: float, bound: float) -> Transition:
        transition = Transition(self.level, level, value, bound)
        self.level = level
        return transition
