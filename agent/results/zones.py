"""Zones, lines and the events of tracked objects: pure logic, no I/O, no clock of its own.

``Scene.update(frame_id, ts, objects)`` takes one frame's tracked objects (``Tracker``)
with the frame's capture time and returns what happened on it, in this order:

- ``object_entered`` for a track id seen for the first time;
- ``line_crossed`` when an object's anchor passed a line since it was last on one
  side of it (direction ``in``: from the line's left to its right, see LineSettings);
- ``zone_entered`` / ``zone_left`` when the anchor came into / went out of a zone
  (``zone_left`` carries the time spent in the zone);
- for a track id gone from the frame: ``zone_left`` for each zone it was in, then
  ``object_left`` with its dwell time (first to last frame it was seen on).

``counts()`` gives the objects in each zone by label after the last update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.core import LineSettings, ResultsSettings, ZoneSettings
from agent.results.tracker import TrackedObject

__all__ = ["EVENT_KINDS", "EventKind", "ResultEvent", "Scene", "crossing_side", "inside"]

EventKind = Literal["object_entered", "object_left", "zone_entered", "zone_left", "line_crossed"]
EVENT_KINDS: tuple[EventKind, ...] = ("object_entered", "object_left", "zone_entered", "zone_left", "line_crossed")
Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ResultEvent:
    """Something a tracked object did on frame ``frame_id`` captured at ``ts`` (unix seconds)."""

    kind: EventKind
    frame_id: int
    ts: float
    track_id: int
    label: str
    box: Box
    zone: str | None = None
    line: str | None = None
    direction: Literal["in", "out"] | None = None
    dwell_s: float | None = None
    """``object_left``: first to last sighting; ``zone_left``: time in the zone."""


def inside(point: Point, polygon: Sequence[Point]) -> bool:
    """Whether ``point`` lies in ``polygon`` (even-odd rule; a point on an edge may fall either way)."""
    x, y = point
    result = False
    n = len(polygon)
    for i in range(n):
        (x1, y1), (x2, y2) = polygon[i], polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result


def crossing_side(point: Point, start: Point, end: Point) -> int:
    """1 when ``point`` is right of ``start -> end`` on screen (y down), -1 left, 0 on the line."""
    cross = (end[0] - start[0]) * (point[1] - start[1]) - (end[1] - start[1]) * (point[0] - start[0])
    return (cross > 0) - (cross < 0)


def _segments_meet(p: Point, q: Point, line: LineSettings) -> bool:
    """Whether the line segment lies across ``p -> q`` (the anchor's move), ends included."""
    return crossing_side(line.start, p, q) * crossing_side(line.end, p, q) <= 0


@dataclass
class _Track:
    label: str
    first_seen: float
    last_seen: float
    zones: dict[str, float] = field(default_factory=dict)
    """Zone name -> when the object entered it."""
    sides: dict[str, tuple[int, Point]] = field(default_factory=dict)
    """Line name -> the last side the anchor was on (never 0) and where it was then."""


def _accepts(labels: tuple[str, ...], label: str) -> bool:
    return not labels or label in labels


class Scene:
    """One camera's zones and lines, and the tracks it has seen. Not thread-safe."""

    def __init__(self, settings: ResultsSettings) -> None:
        self.settings = settings
        self._tracks: dict[int, _Track] = {}
        self._last: dict[int, TrackedObject] = {}
        self._counts: dict[str, dict[str, int]] = {z.name: {} for z in settings.zones}

    def update(self, frame_id: int, ts: float, objects: Sequence[TrackedObject]) -> tuple[ResultEvent, ...]:
        """This frame's events; ``objects`` are all the tracked objects on it (one per track id)."""
        events: list[ResultEvent] = []
        anchor = self.settings.tracker.anchor
        current = {o.track_id: o for o in objects}
        for obj in objects:
            track = self._tracks.get(obj.track_id)
            if track is None:
                track = self._tracks[obj.track_id] = _Track(obj.label, ts, ts)
                events.append(self._event("object_entered", frame_id, ts, obj))
            if obj.matched:
                track.last_seen = ts
            point = obj.anchor(anchor)
            for line in self.settings.lines:
                if _accepts(line.labels, obj.label):
                    events += self._cross(line, track, point, frame_id, ts, obj)
            for zone in self.settings.zones:
                events += self._zone(zone, track, point, frame_id, ts, obj)
        for track_id in [t for t in self._tracks if t not in current]:
            track = self._tracks.pop(track_id)
            last = self._last[track_id]
            for name, since in track.zones.items():
                events.append(self._event("zone_left", frame_id, ts, last, zone=name, dwell_s=ts - since))
            events.append(self._event("object_left", frame_id, ts, last, dwell_s=track.last_seen - track.first_seen))
        self._last = current
        self._count()
        return tuple(events)

    def _cross(self, line: LineSettings, track: _Track, point: Point, frame_id: int, ts: float,
               obj: TrackedObject) -> list[ResultEvent]:
        side = crossing_side(point, line.start, line.end)
        if side == 0:
            return []
        before = track.sides.get(line.name)
        track.sides[line.name] = (side, point)
        if before is None or before[0] == side or not _segments_meet(before[1], point, line):
            return []
        direction: Literal["in", "out"] = "in" if side > 0 else "out"
        return [self._event("line_crossed", frame_id, ts, obj, line=line.name, direction=direction)]

    def _zone(self, zone: ZoneSettings, track: _Track, point: Point, frame_id: int, ts: float,
              obj: TrackedObject) -> list[ResultEvent]:
        now = _accepts(zone.labels, obj.label) and inside(point, zone.polygon)
        since = track.zones.get(zone.name)
        if now and since is None:
            track.zones[zone.name] = ts
            return [self._event("zone_entered", frame_id, ts, obj, zone=zone.name)]
        if not now and since is not None:
            del track.zones[zone.name]
            return [self._event("zone_left", frame_id, ts, obj, zone=zone.name, dwell_s=ts - since)]
        return []

    def _count(self) -> None:
        counts: dict[str, dict[str, int]] = {z.name: {} for z in self.settings.zones}
        for track in self._tracks.values():
            for zone in track.zones:
                by_label = counts[zone]
                by_label[track.label] = by_label.get(track.label, 0) + 1
        self._counts = counts

    def counts(self) -> dict[str, dict[str, int]]:
        """Zone name -> label -> objects in the zone now (a zone with none: an empty mapping)."""
        return {zone: dict(by_label) for zone, by_label in self._counts.items()}

    def track_ids(self) -> frozenset[int]:
        """The track ids on the last frame."""
        return frozenset(self._last)

    @staticmethod
    def _event(kind: EventKind, frame_id: int, ts: float, obj: TrackedObject, *, zone: str | None = None,
               line: str | None = None, direction: Literal["in", "out"] | None = None,
               dwell_s: float | None = None) -> ResultEvent:
        return ResultEvent(kind, frame_id, ts, obj.track_id, obj.label, obj.box, zone, line, direction, dwell_s)
