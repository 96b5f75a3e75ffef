"""What the monitors keep of one frame: its input statistics and a summary of the prediction.

A ``FrameSummary`` is a plain record: the monitors know no frame loop. The frame
worker builds one per frame for all monitors (agent.vision.summary: ``summarize``
and the ``Monitors`` observer): one small resize and three reductions for the
input statistics, a few attribute reads for the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from agent.monitor.stats import InputStats

__all__ = ["FailureCount", "FrameSummary", "SummaryObserver"]

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


class SummaryObserver(Protocol):
    def wants(self, index: int) -> bool:
        """Whether frame ``index`` is one this monitor samples."""
        ...

    def observe(self, summary: FrameSummary) -> None: ...
