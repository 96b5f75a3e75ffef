"""Label-free drift: a sliding window of inputs and outputs against the model's reference.

Per frame (frame worker): one small tuple appended to a bounded deque under a
lock. Per evaluation (telemetry timer, ``snapshot()``): each metric's window is
binned on the reference's edges and compared with PSI and the Jensen-Shannon
distance; each metric's state goes through hysteresis and a change of state is
an event (``take_events()``). Metrics: ``brightness``, ``contrast``,
``sharpness`` (inputs); ``count`` and ``confidence`` (detectors) or ``classes``
and ``confidence`` (classifiers).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, NamedTuple

import numpy as np
import structlog

from agent.core import DriftSection
from agent.monitor.alarms import Judge, SignalEvent
from agent.monitor.features import FrameSummary
from agent.monitor.reference import INPUT_METRICS, Categories, Distribution, Reference, output_metrics
from agent.monitor.stats import InputStats, Thresholds, bin_counts, js_distance, psi
from agent.wire import SignalState

__all__ = ["DriftMonitor"]

log = structlog.get_logger(__name__)

SIGNAL = "drift"
DIGITS = 6


class _Row(NamedTuple):
    inputs: InputStats
    version: str
    task: str | None
    detections: int
    top_label: str | None
    scores: tuple[float, ...]


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


class DriftMonitor:
    """Observer and evaluator of drift; ``reference`` None reports ``no_reference`` per metric."""

    def __init__(self, settings: DriftSection | None = None,
                 reference: Reference | dict[str, Any] | None = None, version: str | None = None) -> None:
        self.settings = s = settings or DriftSection()
        self.window = s.drift_window
        self.sample_every = s.drift_sample_every
        self.min_samples = s.drift_min_samples
        self._measures = {
            "psi": Thresholds(s.drift_psi_alarm, s.drift_psi_warn, s.drift_clear_margin),
            "js": Thresholds(s.drift_js_alarm, s.drift_js_warn, s.drift_clear_margin),
        }
        self._lock = threading.Lock()
        self._rows: deque[_Row] = deque(maxlen=self.window)
        self._events: list[SignalEvent] = []
        self._judges: dict[str, Judge] = {}
        self.reference: Reference | None = None
        self.version: str | None = None
        self.set_reference(reference, version)

    # ----- frame worker ----------------------------------------------------------------------
    def wants(self, index: int) -> bool:
        return index % self.sample_every == 0

    def observe(self, summary: FrameSummary) -> None:
        row = _Row(summary.inputs, summary.version, summary.task, summary.count, summary.top_label,
                   summary.scores)
        with self._lock:
            self._rows.append(row)

    # ----- telemetry loop --------------------------------------------------------------------
    def set_reference(self, reference: Reference | dict[str, Any] | None,
                      version: str | None = None) -> None:
        """Compare against ``reference`` from now on; outputs count only from model ``version``."""
        parsed = None if reference is None else Reference.parse(reference)
        with self._lock:
            self.reference = parsed
            self.version = version
        for judge in self._judges.values():
            event = judge.reset()
            if event is not None:
                self._events.append(event)

    def take_events(self) -> list[SignalEvent]:
        events, self._events = self._events, []
        return events

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            rows = list(self._rows)
            reference, version = self.reference, self.version
        outputs = [r for r in rows
                   if r.task is not None and (version is None or r.version == version)]
        task = reference.task if reference is not None else (outputs[-1].task if outputs else None)
        names = INPUT_METRICS + (output_metrics(task) if task is not None else ())
        metrics = {name: self._metric(name, rows, outputs, reference) for name in names}
        return {
            "version": version,
            "reference": None if reference is None else {
                "model": reference.model.name, "version": reference.model.version,
                "samples": reference.samples,
            },
            "window": self.window,
            "samples": len(rows),
            "metrics": metrics,
        }

    def _values(self, name: str, rows: list[_Row], outputs: list[_Row]) -> tuple[list[Any], int]:
        """The live values of a metric and how many frames they came from."""
        if name in INPUT_METRICS:
            column = INPUT_METRICS.index(name)
            return [r.inputs[column] for r in rows], len(rows)
        if name == "count":
            return [float(r.detections) for r in outputs], len(outputs)
        if name == "classes":
            return [r.top_label for r in outputs if r.top_label is not None], len(outputs)
        scores = [s for r in outputs for s in (r.scores[:1] if r.task == "classify" else r.scores)]
        return scores, len(outputs)

    def _metric(self, name: str, rows: list[_Row], outputs: list[_Row],
                reference: Reference | None) -> dict[str, Any]:
        values, frames = self._values(name, rows, outputs)
        numeric = name != "classes"
        mean = _round(float(np.mean(values))) if numeric and values else None
        expected = None if reference is None else reference.distribution(name)
        entry: dict[str, Any] = {"state": SignalState.NO_REFERENCE, "samples": len(values), "psi": None,
                                 "js": None, "mean": mean, "reference_mean": None}
        if expected is None:
            return entry
        if isinstance(expected, Distribution):
            entry["reference_mean"] = _round(expected.mean)
        if frames < self.min_samples or not values:
            entry["state"] = SignalState.INSUFFICIENT_SAMPLES
            return entry
        ref_counts, live_counts = _histograms(expected, values)
        # The pseudo-count goes into every bin of both histograms, so that a bin a small window
        # happens to miss counts as unlikely rather than impossible (which PSI punishes as a shift).
        ref_counts += self.settings.drift_pseudo_count
        live_counts += self.settings.drift_pseudo_count
        entry["psi"] = _round(psi(ref_counts, live_counts, self.settings.drift_eps))
        entry["js"] = _round(js_distance(ref_counts, live_counts))
        judge = self._judges.get(name)
        if judge is None:
            judge = self._judges[name] = Judge(SIGNAL, name, self._measures)
        event = judge.evaluate({"psi": entry["psi"], "js": entry["js"]})
        if event is not None:
            self._events.append(event)
            log.info("drift_state_changed", metric=name, state=event.state, previous=event.previous,
                     measure=event.measure, value=event.value, threshold=event.threshold)
        entry["state"] = judge.level.label
        return entry


def _histograms(expected: Distribution | Categories,
                values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Reference and live counts over the same bins (classes: an extra bin for unseen labels)."""
    if isinstance(expected, Distribution):
        live = bin_counts(values, expected.edges).astype(np.float64)
        return np.asarray(expected.counts, dtype=np.float64), live
    position = {label: i for i, label in enumerate(expected.labels)}
    live = np.zeros(len(expected.labels) + 1, dtype=np.float64)
    for label in values:
        live[position.get(label, len(expected.labels))] += 1
    return np.asarray((*expected.counts, 0), dtype=np.float64), live
