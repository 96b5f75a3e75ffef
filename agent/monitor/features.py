"""What the monitors keep of one frame: its input statistics and a summary of the prediction.

``summarize()`` runs on the frame worker, once per frame for all monitors
(``Monitors`` is the observer that does that): one small resize and three
reductions for the input statistics, a few attribute reads for the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent.monitor.stats import InputStats, input_stats

if TYPE_CHECKING:
    from agent.vision.pipeline import FrameResult

__all__ = ["FailureCount", "FrameSummary", "Monitors", "SummaryObserver", "summarize"]

log = structlog.get_logger(__name__)

FAILURE_LOG_EVERY = 1000
"""Log a boundary's first failure and every 1000th after: one broken on every frame must not flood
the journal, and the count in each line says how often it failed."""


class FailureCount:
    """The failures caught at one boundary (an observer, a monitor): counted, and logged sparsely."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.count = 0

    def failed(self, where: object, exc: Exception) -> None:
        self.count += 1
        if (self.count - 1) % FAILURE_LOG_EVERY == 0:
            log.warning(self.event, where=repr(where), error=f"{type(exc).__name__}: {exc}", failures=self.count)


@dataclass(frozen=True, slots=True)
class FrameSummary:
    index: int
    source: str
    wall_time: float
    model: str
    version: str
    width: int
    height: int
    inputs: InputStats
    task: str | None
    """The prediction's task; None when the frame failed (error or non-finite output)."""
    count: int
    top_label: str | None
    scores: tuple[float, ...]
    """Detections: every box's score; classifiers: the top-1 probability."""
    labels: tuple[str, ...]
    items: tuple[Any, ...]
    """The prediction's Classification / Detection items (boxes for region slices)."""


def summarize(result: FrameResult) -> FrameSummary:
    frame = result.frame
    height, width = frame.image.shape[:2]
    stats = input_stats(frame.image)
    prediction = result.prediction
    if prediction is None or result.error is not None or not result.finite:
        return FrameSummary(frame.index, frame.source, frame.wall_time, result.model,
                            result.version, width, height, stats, None, 0, None, (), (), ())
    return FrameSummary(
        frame.index, frame.source, frame.wall_time, result.model, result.version, width, height,
        stats, prediction.task, prediction.count, prediction.top_label, tuple(prediction.scores),
        tuple(prediction.labels), tuple(prediction.items),
    )


class SummaryObserver(Protocol):
    def wants(self, index: int) -> bool:
        """Whether frame ``index`` is one this monitor samples."""
        ...

    def observe(self, summary: FrameSummary) -> None: ...


class Monitors:
    """One pipeline observer for several monitors: the frame is summarized once, then shared.

    Each monitor runs behind its own boundary: one that raises is counted in
    ``failures`` and the others still see the frame; nothing reaches inference.
    """

    def __init__(self, monitors: Sequence[SummaryObserver]) -> None:
        self.monitors = tuple(monitors)
        self.failures = FailureCount("monitor_failed")

    def __call__(self, result: FrameResult) -> None:
        index = result.frame.index
        try:
            interested = [m for m in self.monitors if m.wants(index)]
            summary = summarize(result) if interested else None
        except Exception as exc:  # a frame the summary cannot read: the monitors skip it
            self.failures.failed("summarize", exc)
            return
        for monitor in interested:
            try:
                monitor.observe(summary)  # type: ignore[arg-type]
            except Exception as exc:  # a broken monitor must not stop the others or inference
                self.failures.failed(monitor, exc)
