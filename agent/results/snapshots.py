"""Snapshots: a JPEG of an event's best frame, size-bounded, kept in a local folder or sent over MQTT.

Off by default (``SnapshotSettings.enabled``). Per camera, ``Snapshots.observe`` keeps,
for each live track, the frame where its score was highest (scaled down, or cropped to
the box, before it is kept, so memory stays bounded); ``Snapshots.on_event`` renders
that picture for an event of a kind the settings name (boxes, labels and track ids
drawn if asked), fits it under ``max_bytes``, stores it in the camera's sink and
returns its name for the event's ``snapshot`` field. ``FolderSink`` writes atomically
and deletes pictures older than ``retention_s``, then the oldest while the folder
holds more than ``retention_bytes``. ``MqttSink`` (``sink = "mqtt"``) only keeps the
JPEG for the frame's outcome: the results publisher sends it from the asyncio loop on
``snapshots/<camera>`` through the egress guard (the frame thread never waits on MQTT).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from agent.core import SnapshotSettings
from agent.results.tracker import TrackedObject
from agent.results.zones import ResultEvent

__all__ = ["MAX_KEPT_TRACKS", "FolderSink", "MqttSink", "Picture", "SnapshotSink", "Snapshots", "encode_jpeg",
           "render"]

MAX_KEPT_TRACKS = 64
"""Tracks whose best frame is kept at most per camera; past it, the lowest scores are dropped."""
QUALITY_STEP = 15
"""Each retry that does not fit lowers the JPEG quality by this much..."""
MIN_QUALITY = 25
"""...down to this, then halves the picture's size instead."""
MIN_SIDE = 16
"""A picture never gets smaller than this on its longer side."""
BOX_COLOR = (0, 200, 255)
BOX_THICKNESS = 2
LABEL_SCALE = 0.5
LABEL_LIFT = 4
"""Pixels between a box's top edge and its caption's baseline."""
JPEG_SUFFIX = ".jpg"
PART_SUFFIX = ".part"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class _Kept:
    picture: np.ndarray
    """Already cropped and scaled: what the snapshot shows."""
    boxes: tuple[tuple[Box, str], ...]
    """Boxes in the picture's coordinates, with their caption."""
    score: float
    frame_id: int


def _caption(obj: TrackedObject) -> str:
    return f"{obj.label} #{obj.track_id} {obj.score:.2f}"


def render(frame: np.ndarray, focus: Box | None, objects: Sequence[TrackedObject],
           settings: SnapshotSettings) -> tuple[np.ndarray, tuple[tuple[Box, str], ...]]:
    """The picture of ``frame``: cropped around ``focus`` (with margin) when ``crop``, scaled so its
    longer side is at most ``max_side``; and the boxes of ``objects`` in its coordinates."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    if settings.crop and focus is not None:
        fx1, fy1, fx2, fy2 = focus
        mx, my = (fx2 - fx1) * settings.crop_margin, (fy2 - fy1) * settings.crop_margin
        x0, y0 = max(0.0, fx1 - mx), max(0.0, fy1 - my)
        x1, y1 = min(float(width), fx2 + mx), min(float(height), fy2 + my)
    left, top = int(x0), int(y0)
    right, bottom = max(left + 1, int(np.ceil(x1))), max(top + 1, int(np.ceil(y1)))
    picture = frame[top:bottom, left:right]
    scale = min(1.0, settings.max_side / max(picture.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    else:
        picture = picture.copy()
    boxes = tuple(
        (((o.box[0] - left) * scale, (o.box[1] - top) * scale, (o.box[2] - left) * scale, (o.box[3] - top) * scale),
         _caption(o))
        for o in objects
    )
    return picture, boxes


def _draw(picture: np.ndarray, boxes: Sequence[tuple[Box, str]]) -> np.ndarray:
    out: np.ndarray = picture.copy()
    for (x1, y1, x2, y2), caption in boxes:
        cv2.rectangle(out, (round(x1), round(y1)), (round(x2), round(y2)), BOX_COLOR, BOX_THICKNESS)
        cv2.putText(out, caption, (round(x1), max(0, round(y1) - LABEL_LIFT)), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE,
                    BOX_COLOR, 1, cv2.LINE_AA)
    return out


def encode_jpeg(picture: np.ndarray, quality: int, max_bytes: int) -> bytes:
    """``picture`` as a JPEG of at most ``max_bytes``: lower quality first, then smaller."""
    while True:
        ok, data = cv2.imencode(JPEG_SUFFIX, picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"OpenCV could not encode a {picture.shape} picture as JPEG")
        if len(data) <= max_bytes or max(picture.shape[:2]) <= MIN_SIDE:
            return bytes(data.tobytes())
        if quality > MIN_QUALITY:
            quality = max(MIN_QUALITY, quality - QUALITY_STEP)
        else:
            picture = cv2.resize(picture, (max(1, picture.shape[1] // 2), max(1, picture.shape[0] // 2)),
                                 interpolation=cv2.INTER_AREA)


class SnapshotSink(Protocol):
    """Where a camera's pictures go: ``store`` returns the name the event's ``snapshot`` field carries."""

    def store(self, camera: str, name: str, data: bytes) -> str: ...


@dataclass(frozen=True)
class Picture:
    """One snapshot to send over MQTT: the event's picture name and the JPEG's bytes."""

    camera: str
    name: str
    data: bytes


class MqttSink:
    """Pictures kept for the results publisher to send on ``snapshots/<camera>`` (``take`` hands them over)."""

    def __init__(self) -> None:
        self._pending: list[Picture] = []

    def store(self, camera: str, name: str, data: bytes) -> str:
        picture = Picture(camera, f"{camera}/{name}{JPEG_SUFFIX}", data)
        self._pending.append(picture)
        return picture.name

    def take(self) -> tuple[Picture, ...]:
        """The pictures stored since the last call (a frame's events' pictures), in order."""
        pending, self._pending = tuple(self._pending), []
        return pending


class FolderSink:
    """Pictures in ``folder/<camera>/``, written atomically, pruned by age and total size."""

    def __init__(self, folder: Path, settings: SnapshotSettings) -> None:
        self.folder = folder
        self.settings = settings

    def store(self, camera: str, name: str, data: bytes) -> str:
        """Write the picture, then prune the folder; its name under the folder."""
        path = self.write(camera, name, data)
        self.prune()
        return f"{camera}/{path.name}"

    def write(self, camera: str, name: str, data: bytes) -> Path:
        target = self.folder / camera / f"{name}{JPEG_SUFFIX}"
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + PART_SUFFIX)
        with part.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        part.replace(target)
        return target

    def prune(self, now: float | None = None) -> list[Path]:
        """Delete what retention says; returns the deleted paths, oldest first."""
        now = time.time() if now is None else now
        pictures = []
        for path in self.folder.glob(f"*/*{JPEG_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            pictures.append((stat.st_mtime, stat.st_size, path))
        pictures.sort()
        total = sum(size for _, size, _ in pictures)
        deleted = []
        for mtime, size, path in pictures:
            if now - mtime <= self.settings.retention_s and total <= self.settings.retention_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            deleted.append(path)
        return deleted


class Snapshots:
    """One camera's snapshots; every method does nothing while ``settings.enabled`` is false."""

    def __init__(self, camera: str, settings: SnapshotSettings, sink: SnapshotSink) -> None:
        self.camera = camera
        self.settings = settings
        self.sink = sink
        self._kept: dict[int, _Kept] = {}
        self._gone: list[int] = []
        """Tracks absent from the last frame: kept through it for their ``object_left``, then dropped."""
        self.written = 0
        """Pictures stored since start (those over MQTT are counted again by the egress guard as they leave)."""

    def observe(self, frame: np.ndarray, frame_id: int, objects: Sequence[TrackedObject]) -> None:
        """Keep this frame for each matched object whose score is its best so far. Call it with each
        frame's tracked objects before ``on_event`` for that frame's events."""
        if not self.settings.enabled:
            return
        live = {o.track_id for o in objects}
        for track_id in self._gone:
            self._kept.pop(track_id, None)
        self._gone = [t for t in self._kept if t not in live]
        for obj in objects:
            kept = self._kept.get(obj.track_id)
            if not obj.matched or (kept is not None and kept.score >= obj.score):
                continue
            picture, boxes = render(frame, obj.box, objects, self.settings)
            self._kept[obj.track_id] = _Kept(picture, boxes, obj.score, frame_id)
        if len(self._kept) > MAX_KEPT_TRACKS:
            for track_id in sorted(self._kept, key=lambda t: self._kept[t].score)[: len(self._kept) - MAX_KEPT_TRACKS]:
                del self._kept[track_id]

    def on_event(self, event: ResultEvent) -> str | None:
        """The picture of ``event``'s track written to the sink: its name, or None (off, not asked
        for this kind of event, or no frame kept for the track)."""
        if not self.settings.enabled or event.kind not in self.settings.events:
            return None
        kept = self._kept.get(event.track_id)
        if kept is None:
            return None
        picture = _draw(kept.picture, kept.boxes) if self.settings.draw_boxes else kept.picture
        data = encode_jpeg(picture, self.settings.quality, self.settings.max_bytes)
        name = f"{round(event.ts * 1000)}-{event.kind}-{event.track_id}-f{kept.frame_id}"
        stored = self.sink.store(self.camera, name, data)
        self.written += 1
        return stored
