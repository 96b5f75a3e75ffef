"""A camera's results settings: tracker, zones, lines, results rate, snapshots.

Pydantic, ``extra="forbid"``, frozen, each key with its default written once and a
docstring. ``ResultsSettings`` is the ``results`` sub-table of each ``[[camera]]``
(agent.core.config.camera.CameraSection); it lives in the config package, not in agent.results,
so that reading a config imports no tracker, OpenCV or ONNX. agent.results re-exports
it and its logic takes these sections as its parameters.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.core.names import check_name

__all__ = [
    "LineSettings",
    "RateSettings",
    "ResultsSettings",
    "SnapshotSettings",
    "TrackerSettings",
    "ZoneSettings",
]

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""A zone or line name: one MQTT topic level and one Prometheus label value, bounded."""
MAX_POLYGON_POINTS = 64
MAX_ZONES = 32
"""Zones (and lines) per camera at most: counts are published per zone and label."""
MAX_COORDINATE = 16_384.0
"""Zone and line points are frame pixels; no camera frame is wider or taller."""

Point = tuple[float, float]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


def _name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError(f"{value!r} must be 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    return value


def _points(points: tuple[Point, ...]) -> tuple[Point, ...]:
    for x, y in points:
        if not (0.0 <= x <= MAX_COORDINATE and 0.0 <= y <= MAX_COORDINATE):
            raise ValueError(f"point ({x}, {y}) must lie within 0..{MAX_COORDINATE:g} frame pixels")
    return points


class ZoneSettings(_Settings):
    """A polygon in frame pixels; an object is in it when its anchor point is."""

    name: str
    """Names the zone in events and counts."""
    polygon: tuple[Point, ...] = Field(min_length=3, max_length=MAX_POLYGON_POINTS)
    """Corners in frame pixels, in order (either direction)."""
    labels: tuple[str, ...] = ()
    """Only objects with these labels enter the zone; empty: every label."""

    _check_name = field_validator("name")(_name)
    _check_points = field_validator("polygon")(_points)


class LineSettings(_Settings):
    """A segment in frame pixels; an object's anchor crossing it is a ``line_crossed`` event.

    The direction is ``in`` when the anchor passes from the left of ``start -> end``
    to its right (image coordinates, y down), ``out`` the other way.
    """

    name: str
    """Names the line in events."""
    start: Point
    """One end, in frame pixels."""
    end: Point
    """The other end; ``in`` is from the left of ``start -> end`` to its right."""
    labels: tuple[str, ...] = ()
    """Only objects with these labels are counted crossing; empty: every label."""

    _check_name = field_validator("name")(_name)

    @model_validator(mode="after")
    def _segment(self) -> LineSettings:
        _points((self.start, self.end))
        if self.start == self.end:
            raise ValueError("a line needs two different points")
        return self


class TrackerSettings(_Settings):
    """Track ids across frames (norfair's tracker, IoU distance, per camera)."""

    min_iou: float = Field(default=0.3, gt=0.0, lt=1.0)
    """A detection continues a track when their boxes overlap at least this much."""
    max_missed_frames: int = Field(default=15, ge=1, le=1000)
    """Frames in a row without a detection a track lives through at most; on the next it is
    lost (``object_left``). A track seen for fewer frames lives through as many."""
    confirm_frames: int = Field(default=1, ge=0, le=100)
    """Frames a new track must be seen again before it gets an id (0: at once)."""
    anchor: Literal["center", "bottom_center"] = "center"
    """The point of a box that is in a zone or crosses a line (``bottom_center``: the feet)."""

    @model_validator(mode="after")
    def _confirm_before_lost(self) -> TrackerSettings:
        if self.confirm_frames >= self.max_missed_frames:
            raise ValueError("confirm_frames must be below max_missed_frames")
        return self


class RateSettings(_Settings):
    """How often a camera's results are published."""

    mode: Literal["every_frame", "max_rate", "on_change"] = "max_rate"
    """``every_frame``; ``max_rate``: at most ``max_per_s``; ``on_change``: when the set of
    track ids changes."""
    max_per_s: float = Field(default=5.0, gt=0.0, le=1000.0)
    """``max_rate``: results per second at most."""


class SnapshotSettings(_Settings):
    """A JPEG of an event's best frame, kept in a local folder or sent over MQTT. Off by default."""

    enabled: bool = False
    """Pictures are made for the ``events`` below and go to the ``sink``."""
    sink: Literal["folder", "mqtt"] = "folder"
    """``folder``: written under ``folder``, pruned by retention, never sent. ``mqtt``: each picture
    published as the bytes of one JPEG on ``<prefix>/<id>/snapshots/<camera>`` (QoS 1, sent on
    the live connection or counted as dropped, never queued in the outbox), counted in the leak
    telemetry's ``egress`` (``images``, ``image_bytes``); the egress guard lets a JPEG out on that
    topic only, up to ``[monitor] egress_max_image_bytes``."""
    events: tuple[Literal["object_entered", "object_left", "zone_entered", "zone_left", "line_crossed"], ...] = (
        "object_left",
    )
    """Events that get a picture: the best frame (highest score) of the object so far; for
    ``object_left``, of its whole life."""
    crop: bool = False
    """The object's box (with ``crop_margin``) instead of the whole frame."""
    crop_margin: float = Field(default=0.2, ge=0.0, le=2.0)
    """Added around a cropped box on each side, as a fraction of its size."""
    draw_boxes: bool = True
    """Boxes, labels and track ids drawn on the picture."""
    max_side: int = Field(default=640, ge=32, le=8192)
    """The picture is scaled down until its longer side is at most this many pixels."""
    max_bytes: int = Field(default=200_000, ge=4096, le=10_000_000)
    """A JPEG larger than this is encoded again at lower quality, then smaller, until it fits."""
    quality: int = Field(default=85, ge=10, le=100)
    """JPEG quality of the first try."""
    folder: Path = Path("snapshots")
    """Where pictures are written (relative: under the agent's state_dir)."""
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0.0)
    """Pictures older than this are deleted."""
    retention_bytes: int = Field(default=500_000_000, ge=1_000_000)
    """The oldest pictures are deleted while the folder holds more than this."""


class ResultsSettings(_Settings):
    """Everything a camera does with its predictions."""

    enabled: bool = True
    """Track, publish results, events and counts for this camera; false: its frames are
    inferred (and monitored) as before, and nothing of this table runs."""
    qos: Literal[0, 1] = 0
    """MQTT QoS of ``results/<camera>``. Results are never queued while the broker is away
    (a stale frame is worth nothing and would crowd the outbox): they are counted as dropped.
    Events always go through the outbox at QoS 1, counts are retained at QoS 1."""
    tracker: TrackerSettings = TrackerSettings()
    """Track ids across frames."""
    zones: tuple[ZoneSettings, ...] = Field(default=(), max_length=MAX_ZONES)
    """Polygons: ``zone_entered``/``zone_left`` events and retained counts per label."""
    lines: tuple[LineSettings, ...] = Field(default=(), max_length=MAX_ZONES)
    """Segments: ``line_crossed`` events with a direction."""
    rate: RateSettings = RateSettings()
    """How often ``results/<camera>`` is published."""
    snapshots: SnapshotSettings = SnapshotSettings()
    """A picture of an event's best frame (off by default)."""
    second_stage: str | None = None
    """A model of the store run on each box's crop of the frames whose results go out (the rate's),
    e.g. ``"text-rec"``: a recognizer (``task: recognize``, ``ctc`` head) whose text the results
    carry (``text``, ``text_confidence``, ``second_stage``). Loaded at start (or when ``cmd/cameras``
    names it) from its current version in the store; not installed: logged, and the results go out
    without text. Deployed and rolled back by its name (``deploy --name text-rec``). None: none."""

    @field_validator("second_stage")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value, "second_stage")

    @model_validator(mode="after")
    def _unique_names(self) -> ResultsSettings:
        names = [z.name for z in self.zones] + [line.name for line in self.lines]
        if len(set(names)) != len(names):
            raise ValueError("zone and line names must be unique within a camera")
        return self
