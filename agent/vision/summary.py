"""A frame's result made into the monitors' record, and the observer that shares it among them.

``summarize()`` runs on the frame worker, once per frame for all monitors
(``Monitors`` is the pipeline observer that does that): one small resize and three
reductions for the input statistics (agent.monitor.stats), a few attribute reads
for the prediction. The monitors themselves (agent.monitor) see only the
``FrameSummary``; they know no pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.monitor import FailureCount, FrameSummary, SummaryObserver, input_stats
from agent.vision.pipeline import FrameResult

__all__ = ["Monitors", "observe", "summarize"]


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


def observe(monitor: SummaryObserver, result: FrameResult) -> None:
    """Give one monitor one frame, if it samples that frame (no boundary: errors propagate)."""
    if monitor.wants(result.frame.index):
        monitor.observe(summarize(result))


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
            if not interested:
                return
            summary = summarize(result)
        except Exception as exc:  # a frame the summary cannot read: the monitors skip it
            self.failures.failed("summarize", exc)
            return
        for monitor in interested:
            try:
                monitor.observe(summary)
            except Exception as exc:  # a broken monitor must not stop the others or inference
                self.failures.failed(monitor, exc)
