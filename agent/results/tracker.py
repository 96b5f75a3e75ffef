"""Track ids across a camera's frames, from norfair's tracker (docs/results.md says why norfair).

``Tracker.update(detections)`` takes one frame's boxes (frame pixels, score, label) and
returns the tracked objects that hold an id: norfair's Kalman-filtered tracks matched
by box IoU, a label only ever continuing a track of the same label. A track is
``matched`` on a frame where a detection continued it; between detections it lives on
its last box, then is gone: norfair's hit counter rises by one a matched frame (up to
``max_missed_frames``) and falls by one a missed frame, so a track lives through at most
``max_missed_frames`` missed frames in a row (one seen for n frames, through n) and is
gone on the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from norfair.tracker import Detection as NorfairDetection
from norfair.tracker import Tracker as NorfairTracker

from agent.core import TrackerSettings
from agent.vision import Detection

__all__ = ["TrackedObject", "Tracker"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackedObject:
    """One object with a track id on one frame; ``box`` is the detection's when ``matched``."""

    track_id: int
    label: str
    box: Box
    score: float
    matched: bool
    detection: Detection | None = field(default=None, compare=False, repr=False)
    """The detection of this frame that continued the track (None when not ``matched``)."""

    def anchor(self, where: str) -> tuple[float, float]:
        """The box's ``center`` or ``bottom_center`` in frame pixels."""
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2, y2 if where == "bottom_center" else (y1 + y2) / 2)


class Tracker:
    """One camera's tracker: detections in, tracked objects with ids out. Not thread-safe:
    one frame worker calls it, frame after frame."""

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        self._tracker = NorfairTracker(
            distance_function="iou",
            distance_threshold=1.0 - settings.min_iou,
            hit_counter_max=settings.max_missed_frames,
            initialization_delay=settings.confirm_frames,
        )

    def update(self, detections: Sequence[Detection]) -> tuple[TrackedObject, ...]:
        """This frame's tracked objects, by track id."""
        given = [
            NorfairDetection(
                points=np.array([d.box[:2], d.box[2:]], dtype=np.float64),
                scores=np.array([d.score, d.score], dtype=np.float64),
                label=d.label,
                data=d,
            )
            for d in detections
        ]
        fresh = {id(g) for g in given}
        tracked: list[Any] = self._tracker.update(detections=given)
        out = []
        for obj in tracked:
            last = obj.last_detection
            source: Detection = last.data
            matched = id(last) in fresh
            x1, y1, x2, y2 = (float(v) for v in source.box)
            out.append(TrackedObject(int(obj.id), str(obj.label), (x1, y1, x2, y2), float(source.score), matched,
                                     source if matched else None))
        out.sort(key=lambda o: o.track_id)
        return tuple(out)
