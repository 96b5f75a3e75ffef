"""Bias: does the model select and score frames alike across slices of its input?

Slicings: ``source`` (the camera's configured name), ``brightness`` (dark /
normal / bright by mean luma), ``time_of_day`` (night / morning / afternoon /
evening, device local time), and ``region`` when the manifest names regions.
Per slice over a sliding window: the selection rate (share of frames with a
positive prediction) and the mean confidence; per slicing the largest
difference and the smallest ratio between measured slices, and the four-fifths
flag (a ratio below 0.8). The four-fifths rule is a screening rule: a flag asks
for a look at the data, it is not a verdict of unfairness. Slices with fewer
than ``min_samples`` frames are reported as ``insufficient_samples`` and never
enter a ratio. Labelled feedback (agent.monitor.feedback) adds per-slice
accuracy, recall, false-positive rate and the equalized-odds gap.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.core import BiasSection
from agent.monitor.alarms import Judge, SignalEvent
from agent.monitor.errors import MonitorError
from agent.monitor.features import FrameSummary
from agent.monitor.feedback import (
    FEEDBACK_SLICINGS,
    FeedbackCommand,
    FeedbackItem,
    FrameRecord,
    LabelledOutcomes,
    RecentFrames,
)
from agent.monitor.stats import Thresholds
from agent.wire import SignalState, SliceStatus

__all__ = ["FOUR_FIFTHS", "BiasConfigError", "BiasMonitor", "SliceSpec", "brightness_band", "time_of_day"]

log = structlog.get_logger(__name__)

SIGNAL = "bias"
FOUR_FIFTHS = 0.8
"""The four-fifths rule: a slice selected at under 80% of the best slice's rate is flagged."""
DAY_BUCKETS = ((0, "night"), (6, "morning"), (12, "afternoon"), (18, "evening"))
"""Local hour at which each time-of-day bucket starts."""
BANDS = ("dark", "normal", "bright")
DIGITS = 6
MAX_REGIONS = 32


class BiasConfigError(MonitorError, ValueError):
    """The manifest's ``slices`` or the bias settings are invalid; the message names the key."""


class SliceSpec(BaseModel):
    """Slices a model's owner names in the manifest: ``{"regions": {"left": [0, 0, 0.5, 1]}}``.

    A region is ``[x0, y0, x1, y1]`` as fractions of the frame; a detection is in
    the region its box centre falls in (detectors only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    regions: dict[str, tuple[float, float, float, float]] = Field(default_factory=dict,
                                                                  max_length=MAX_REGIONS)

    @field_validator("regions")
    @classmethod
    def _boxes(cls, value: dict[str, tuple[float, float, float, float]]) -> dict[str, Any]:
        for name, (x0, y0, x1, y1) in value.items():
            if not name or len(name) > 64:
                raise ValueError(f"region name {name!r} must be 1-64 characters")
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"region {name!r}: [x0, y0, x1, y1] must be fractions "
                                 "with x0 < x1 and y0 < y1")
        return value

    @classmethod
    def parse(cls, data: Mapping[str, Any] | SliceSpec | None) -> SliceSpec:
        """Validate a manifest's ``slices``; BiasConfigError names the key that is wrong."""
        if isinstance(data, SliceSpec):
            return data
        if data is not None and not isinstance(data, Mapping):
            raise BiasConfigError(f"manifest slices: must be an object, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = "unknown slicing" if first["type"] == "extra_forbidden" else first["msg"]
            raise BiasConfigError(f"manifest slices.{where}: {message}") from exc


def brightness_band(luma: float, bands: tuple[float, float]) -> str:
    return BANDS[0] if luma < bands[0] else BANDS[2] if luma >= bands[1] else BANDS[1]


def time_of_day(wall_time: float) -> str:
    hour = time.localtime(wall_time).tm_hour
    return next(name for start, name in reversed(DAY_BUCKETS) if hour >= start)


@dataclass(frozen=True, slots=True)
class _Entry:
    slices: tuple[tuple[str, str], ...]
    positive: bool | None
    confidence: float | None
    regions: tuple[tuple[str, bool, float | None], ...]


@dataclass
class _Aggregate:
    samples: int = 0
    judged: int = 0
    positives: int = 0
    confidence_sum: float = 0.0
    confidence_n: int = 0

    def add(self, positive: bool | None, confidence: float | None) -> None:
        self.samples += 1
        if positive is not None:
            self.judged += 1
            self.positives += positive
        if confidence is not None:
            self.confidence_sum += confidence
            self.confidence_n += 1


def _ratio(numerator: float, denominator: int) -> float | None:
    return round(numerator / denominator, DIGITS) if denominator else None


def _parity(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"max_difference": None, "min_ratio": None}
    low, high = min(values), max(values)
    return {"max_difference": round(high - low, DIGITS),
            "min_ratio": round(low / high, DIGITS) if high > 0 else 1.0}


class BiasMonitor:
    """Observer and evaluator of slice parity, and the receiver of labelled feedback."""

    def __init__(self, settings: BiasSection | None = None,
                 slices: Mapping[str, Any] | SliceSpec | None = None) -> None:
        self.settings = s = settings or BiasSection()
        self.spec = slices if isinstance(slices, SliceSpec) else SliceSpec.parse(slices)
        self._labels = frozenset(s.bias_positive_labels)
        self._lock = threading.Lock()
        self._window: deque[_Entry] = deque(maxlen=s.bias_window)
        self.recent = RecentFrames(s.bias_frames_kept)
        self._cameras: set[str] = set()
        """Every camera a frame was remembered from (feedback without a camera needs just one)."""
        self.outcomes = LabelledOutcomes(s.bias_feedback_window, s.bias_min_labelled, s.bias_positive_labels)
        self._judges: dict[str, Judge] = {}
        self._events: list[SignalEvent] = []

    # ----- frame worker ----------------------------------------------------------------------
    def wants(self, index: int) -> bool:
        return index % self.settings.bias_sample_every == 0

    def observe(self, summary: FrameSummary) -> None:
        if summary.task is None:
            return
        entry = self._entry(summary)
        with self._lock:
            self._window.append(entry)
        frame_slices = tuple(k for k in entry.slices if k[0] in FEEDBACK_SLICINGS)
        with self._lock:
            self._cameras.add(summary.source)
        self.recent.remember((summary.source, summary.index), FrameRecord(
            frame_slices, entry.positive, summary.top_label, summary.task == "classify"))

    def _entry(self, summary: FrameSummary) -> _Entry:
        s = self.settings
        slices = (("source", summary.source),
                  ("brightness", brightness_band(summary.inputs.brightness, s.bias_brightness_bands)),
                  ("time_of_day", time_of_day(summary.wall_time)))
        if summary.task == "classify":
            confidence = summary.scores[0] if summary.scores else None
            positive = None
            if self._labels:
                positive = (summary.top_label in self._labels and confidence is not None
                            and confidence >= s.bias_positive_threshold)
            return _Entry(slices, positive, confidence, ())
        chosen = [d for d in summary.items if not self._labels or d.label in self._labels]
        confidence = max((d.score for d in chosen), default=None)
        positive = confidence is not None and confidence >= s.bias_positive_threshold
        return _Entry(slices, positive, confidence, self._regions(summary, chosen))

    def _regions(self, summary: FrameSummary,
                 chosen: list[Any]) -> tuple[tuple[str, bool, float | None], ...]:
        if not self.spec.regions:
            return ()
        out = []
        for name, (x0, y0, x1, y1) in self.spec.regions.items():
            best = None
            for d in chosen:
                cx = (d.box[0] + d.box[2]) / 2 / summary.width
                cy = (d.box[1] + d.box[3]) / 2 / summary.height
                if x0 <= cx < x1 and y0 <= cy < y1 and (best is None or d.score > best):
                    best = d.score
            out.append((name, best is not None and best >= self.settings.bias_positive_threshold, best))
        return tuple(out)

    # ----- telemetry loop --------------------------------------------------------------------
    def set_slices(self, slices: Mapping[str, Any] | SliceSpec | None) -> None:
        """A new model's manifest slices; the window starts afresh (it held the old model's)."""
        spec = SliceSpec.parse(slices)
        with self._lock:
            self.spec = spec
            self._window.clear()
        for judge in self._judges.values():
            event = judge.reset()
            if event is not None:
                self._events.append(event)

    def feedback(self, frame_id: int, label: str | None = None,
                 positive: bool | None = None, camera: str | None = None) -> bool:
        """One labelled frame; False when that frame is no longer remembered."""
        item = FeedbackItem(frame_id=frame_id, label=label, positive=positive, camera=camera)
        return self.outcomes.add(self._recalled(item), item)

    def _recalled(self, item: FeedbackItem) -> FrameRecord | None:
        """The frame an item labels: by camera and index; without a camera only while one camera
        has been seen (with several, the index alone names a frame of each: unmatched)."""
        camera = item.camera
        if camera is None:
            with self._lock:
                cameras = tuple(self._cameras)
            if len(cameras) != 1:
                return None
            camera = cameras[0]
        return self.recent.get((camera, item.frame_id))

    def apply(self, command: FeedbackCommand) -> dict[str, int]:
        matched = sum(self.outcomes.add(self._recalled(i), i) for i in command.items)
        return {"matched": matched, "unmatched": len(command.items) - matched}

    def take_events(self) -> list[SignalEvent]:
        events, self._events = self._events, []
        return events

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self._window)
        aggregates: dict[str, dict[str, _Aggregate]] = {}
        for entry in entries:
            for slicing, name in entry.slices:
                aggregates.setdefault(slicing, {}).setdefault(name, _Aggregate()).add(
                    entry.positive, entry.confidence)
            for name, positive, confidence in entry.regions:
                aggregates.setdefault("region", {}).setdefault(name, _Aggregate()).add(
                    positive, confidence)
        slicings = {name: self._slicing(name, slices) for name, slices in aggregates.items()}
        return {
            "window": self.settings.bias_window,
            "samples": len(entries),
            "positive_threshold": self.settings.bias_positive_threshold,
            "positive_labels": list(self.settings.bias_positive_labels),
            "slicings": slicings,
            "feedback": self._feedback(),
        }

    def _judge(self, metric: str, measure: str, thresholds: Thresholds, value: float) -> SignalState:
        judge = self._judges.get(metric)
        if judge is None:
            judge = self._judges[metric] = Judge(SIGNAL, metric, {measure: thresholds})
        event = judge.evaluate({measure: value})
        if event is not None:
            self._events.append(event)
            log.info("bias_state_changed", metric=metric, state=event.state,
                     previous=event.previous, value=event.value, threshold=event.threshold)
        return judge.level.label

    def _slicing(self, slicing: str, aggregates: dict[str, _Aggregate]) -> dict[str, Any]:
        s = self.settings
        slices: dict[str, dict[str, Any]] = {}
        for name, a in sorted(aggregates.items()):
            enough = a.samples >= s.bias_min_samples
            slices[name] = {
                "samples": a.samples,
                "status": SliceStatus.MEASURED if enough else SliceStatus.INSUFFICIENT_SAMPLES,
                "selection_rate": _ratio(a.positives, a.judged) if enough else None,
                "mean_confidence": _ratio(a.confidence_sum, a.confidence_n) if enough else None,
            }
        measured = [v for v in slices.values() if v["status"] == SliceStatus.MEASURED]
        rates = [v["selection_rate"] for v in measured if v["selection_rate"] is not None]
        selection = _parity(rates)
        confidence = _parity(
            [v["mean_confidence"] for v in measured if v["mean_confidence"] is not None])
        ratio, difference = selection["min_ratio"], selection["max_difference"]
        if not any(a.judged for a in aggregates.values()):
            state = SignalState.NOT_APPLICABLE
        elif ratio is None or difference is None:
            state = SignalState.INSUFFICIENT_SAMPLES
        else:
            effective = 1.0 if difference < s.bias_min_difference else ratio
            thresholds = Thresholds(s.bias_ratio_alarm, s.bias_ratio_warn, s.bias_clear_margin,
                                    higher_is_worse=False)
            state = self._judge(f"{slicing}.selection_rate", "ratio", thresholds, effective)
        return {
            "slices": slices,
            "selection_rate": selection,
            "mean_confidence": confidence,
            "four_fifths_flag": ratio is not None and ratio < FOUR_FIFTHS,
            "state": state,
        }

    def _feedback(self) -> dict[str, Any]:
        s = self.settings
        per_slicing: dict[str, Any] = {}
        for slicing, slices in self.outcomes.slice_rates().items():
            gaps = LabelledOutcomes.odds_gap(slices)
            gap = gaps["equalized_odds_gap"]
            if gap is None:
                state = SignalState.INSUFFICIENT_SAMPLES
            else:
                thresholds = Thresholds(s.bias_odds_alarm, s.bias_odds_warn, s.bias_clear_margin)
                state = self._judge(f"{slicing}.equalized_odds", "gap", thresholds, gap)
            per_slicing[slicing] = {"slices": slices, **gaps, "state": state}
        return {"matched": self.outcomes.matched, "unmatched": self.outcomes.unmatched,
                "slicings": per_slicing}
