"""Labelled feedback: what the frames really showed, matched to what the model said about them.

The control plane sends ``cmd/feedback`` with frame ids (``frame.index``, which
the agent publishes on request) and either the true ``label`` or whether the
frame was truly ``positive``. Each item is matched against a bounded ring of
recent frames; matched outcomes give per-slice accuracy, recall (true-positive
rate) and false-positive rate, and the equalized-odds gap: the largest
difference in TPR or FPR between two slices of one slicing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.wire import FeedbackCommand, FeedbackItem, SliceStatus

__all__ = [
    "FEEDBACK_SLICINGS",
    "FeedbackCommand",
    "FeedbackItem",
    "FrameRecord",
    "LabelledOutcomes",
    "Outcome",
    "RecentFrames",
]

FEEDBACK_SLICINGS = ("source", "brightness", "time_of_day")
"""Frame-level slicings; region slices describe boxes, which frame-level labels cannot judge."""
DIGITS = 6


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """What the model said about one recent frame, and which slices the frame is in."""

    slices: tuple[tuple[str, str], ...]
    """(slicing, slice) pairs, e.g. ``("brightness", "dark")``."""
    positive: bool | None
    """Predicted positive (None: the positive rule does not apply to this model)."""
    top_label: str | None
    classifier: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    slices: tuple[tuple[str, str], ...]
    truth: bool | None
    predicted: bool | None
    correct: bool | None


class RecentFrames:
    """A bounded ring of FrameRecords by frame key (the oldest is forgotten first). Thread-safe.

    The key is ``(camera, frame.index)``: frame indices count per camera."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._records: OrderedDict[Hashable, FrameRecord] = OrderedDict()

    def remember(self, frame_id: Hashable, record: FrameRecord) -> None:
        with self._lock:
            self._records[frame_id] = record
            self._records.move_to_end(frame_id)
            if len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def get(self, frame_id: Hashable) -> FrameRecord | None:
        with self._lock:
            return self._records.get(frame_id)


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, DIGITS) if denominator else None


def _spread(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known) - min(known), DIGITS) if len(known) >= 2 else None


@dataclass
class _Tally:
    samples: int = 0
    correct: int = 0
    judged: int = 0
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    def add(self, outcome: Outcome) -> None:
        self.samples += 1
        if outcome.correct is not None:
            self.judged += 1
            self.correct += outcome.correct
        if outcome.truth is None or outcome.predicted is None:
            return
        if outcome.truth:
            self.tp += outcome.predicted
            self.fn += not outcome.predicted
        else:
            self.fp += outcome.predicted
            self.tn += not outcome.predicted


class LabelledOutcomes:
    """Matched feedback, bounded; per-slice rates and the equalized-odds gap on demand.

    A ``positive`` item is the truth itself. A ``label`` item is compared with a
    classifier's top-1 label (accuracy) and is positive when it is one of
    ``positive_labels``; for a detector, a label is positive when it is one of
    ``positive_labels``, or any label when none are configured.
    """

    def __init__(self, capacity: int, min_labelled: int,
                 positive_labels: Sequence[str] = ()) -> None:
        self.positive_labels = frozenset(positive_labels)
        self.min_labelled = min_labelled
        self._outcomes: deque[Outcome] = deque(maxlen=capacity)
        self.matched = 0
        self.unmatched = 0

    def _truth(self, record: FrameRecord, item: FeedbackItem) -> bool | None:
        if item.positive is not None:
            return item.positive
        if self.positive_labels:
            return item.label in self.positive_labels
        return None if record.classifier else True

    def add(self, record: FrameRecord | None, item: FeedbackItem) -> bool:
        """Record one item against its frame; False when the frame is no longer remembered."""
        if record is None:
            self.unmatched += 1
            return False
        truth = self._truth(record, item)
        if item.label is not None and record.classifier:
            correct: bool | None = record.top_label == item.label
        elif truth is not None and record.positive is not None:
            correct = truth == record.positive
        else:
            correct = None
        self._outcomes.append(Outcome(record.slices, truth, record.positive, correct))
        self.matched += 1
        return True

    def slice_rates(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per slicing, per slice: samples, accuracy, recall, fpr (None where not measurable)."""
        tallies: dict[tuple[str, str], _Tally] = {}
        for outcome in self._outcomes:
            for key in outcome.slices:
                tallies.setdefault(key, _Tally()).add(outcome)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (slicing, name), t in sorted(tallies.items()):
            enough = t.samples >= self.min_labelled
            out.setdefault(slicing, {})[name] = {
                "samples": t.samples,
                "status": SliceStatus.MEASURED if enough else SliceStatus.INSUFFICIENT_SAMPLES,
                "accuracy": _rate(t.correct, t.judged) if enough else None,
                "recall": _rate(t.tp, t.tp + t.fn) if enough else None,
                "fpr": _rate(t.fp, t.fp + t.tn) if enough else None,
            }
        return out

    @staticmethod
    def odds_gap(slices: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
        """TPR and FPR spreads between the measured slices, and the larger of the two."""
        measured = [s for s in slices.values() if s["status"] == SliceStatus.MEASURED]
        tpr = _spread([s["recall"] for s in measured])
        fpr = _spread([s["fpr"] for s in measured])
        known = [v for v in (tpr, fpr) if v is not None]
        return {"tpr_gap": tpr, "fpr_gap": fpr, "equalized_odds_gap": max(known) if known else None}
