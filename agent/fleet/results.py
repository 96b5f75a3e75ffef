"""What the fleet reads of the cameras' results, counts and object events, read tolerantly and fast.

``results/<camera>`` arrives on every frame a camera's rate lets out, so the consumer does not
validate it against ``ResultsPayload`` (nor import agent.results, which brings OpenCV and the
tracker): one ``orjson`` parse, then only the fields the fleet uses are checked, and a message
whose shape is wrong is rejected as a whole. ``counts/<camera>`` (retained, rare) is read the same
way; object events are ``EventPayload``s already validated, whose ``data`` is read here.
``snapshots/<camera>`` (a camera's event pictures, when its snapshots go over MQTT) is the bytes
of one JPEG: checked to be one, within ``MAX_SNAPSHOT_BYTES``, and kept as it came.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from agent.wire import EventPayload, PayloadError

__all__ = [
    "CAMERA_TOPICS",
    "MAX_SNAPSHOT_BYTES",
    "OBJECT_EVENT_KINDS",
    "CountsDigest",
    "ObjectEvent",
    "ResultsDigest",
    "SnapshotPicture",
    "camera_topic",
    "loose_object",
    "object_event",
    "read_counts",
    "read_results",
    "read_snapshot",
]

CAMERA_TOPICS = ("results", "counts", "snapshots")
"""Topic kinds with the camera's name as their last level: ``<prefix>/<id>/results/<camera>``."""
OBJECT_EVENT_KINDS = ("object_entered", "object_left", "zone_entered", "zone_left", "line_crossed")
"""agent.results.zones.EVENT_KINDS (a test keeps them equal)."""
MAX_NAME = 128
"""agent.results.payloads.MAX_NAME: the longest camera, zone or label name."""
ITEMS = {"detect": "boxes", "classify": "top_k", "text_detect": "texts"}
"""The list of items of each head's prediction."""
TEXT_LABEL = "text"
"""The label a text box is counted under (text items carry no label)."""
MAX_SNAPSHOT_BYTES = 4_000_000
"""The largest picture the fleet keeps: four times a device's default egress bound for one image
(``egress_max_image_bytes``); one picture per camera is kept, so a fleet's memory stays bounded."""
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"


def camera_topic(suffix: str) -> tuple[str, str] | None:
    """``(kind, camera)`` of ``results/<camera>``, ``counts/<camera>`` or ``snapshots/<camera>``; None
    for any other suffix."""
    kind, _, camera = suffix.partition("/")
    if kind not in CAMERA_TOPICS or not _name(camera) or "/" in camera or "+" in camera or "#" in camera:
        return None
    return kind, camera


@dataclass(frozen=True)
class ResultsDigest:
    """One results message: its camera, sequence number, and how many objects of each label it saw."""

    device_id: str
    camera: str
    seq: int
    ts: float
    frame_id: int
    labels: Counter[str]


@dataclass(frozen=True)
class CountsDigest:
    """A camera's retained counts: objects now per zone and label."""

    device_id: str
    camera: str
    seq: int
    ts: float
    zones: dict[str, dict[str, int]]


@dataclass(frozen=True)
class ObjectEvent:
    """An object, zone or line event as the dashboard and the metrics use it."""

    device_id: str
    ts: float
    kind: str
    camera: str
    label: str
    track_id: int
    place: str
    """The zone or line it concerns; empty for ``object_entered`` / ``object_left``."""
    message: str


def _name(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def loose_object(data: bytes) -> dict[str, Any]:
    """A JSON object, unvalidated; PayloadError when ``data`` is not one."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError(f"must be a JSON object, got {type(document).__name__}")
    return document


def _document(data: bytes, camera: str) -> dict[str, Any]:
    document = loose_object(data)
    if document.get("camera") != camera:
        raise PayloadError("camera does not match its topic")
    if not (_name(document.get("device_id")) and _int(document.get("seq")) and _number(document.get("ts"))
            and _int(document.get("frame_id"))):
        raise PayloadError("device_id, seq, ts and frame_id must be given")
    return document


def read_results(data: bytes, camera: str) -> ResultsDigest:
    """``results/<camera>``; PayloadError when the fields the fleet reads are missing or of the wrong type."""
    document = _document(data, camera)
    prediction = document.get("prediction")
    head = prediction.get("head") if isinstance(prediction, dict) else None
    items = prediction.get(ITEMS[head]) if isinstance(prediction, dict) and head in ITEMS else None
    if not isinstance(items, list):
        raise PayloadError("prediction must name a known head and carry its items")
    labels: Counter[str] = Counter()
    if head == "text_detect":
        labels[TEXT_LABEL] = len(items)
    else:
        chosen = items[:1] if head == "classify" else items
        for item in chosen:
            label = item.get("label") if isinstance(item, dict) else None
            if not _name(label):
                raise PayloadError("every item needs a label")
            labels[label] += 1
    return ResultsDigest(document["device_id"], camera, document["seq"], float(document["ts"]),
                         document["frame_id"], labels)


def read_counts(data: bytes, camera: str) -> CountsDigest:
    """``counts/<camera>``: ``zones`` must map zone names to label names to counts."""
    document = _document(data, camera)
    zones = document.get("zones")
    if not isinstance(zones, dict) or not all(
            _name(zone) and isinstance(labels, dict) and all(_name(k) and _int(v) for k, v in labels.items())
            for zone, labels in zones.items()):
        raise PayloadError("zones must map zone names to {label: count}")
    return CountsDigest(document["device_id"], camera, document["seq"], float(document["ts"]), zones)


@dataclass(frozen=True)
class SnapshotPicture:
    """A camera's latest event picture: the JPEG as it came."""

    camera: str
    jpeg: bytes


def read_snapshot(data: bytes, camera: str) -> SnapshotPicture:
    """``snapshots/<camera>``: the bytes of one JPEG of at most ``MAX_SNAPSHOT_BYTES``."""
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise PayloadError(f"a snapshot of {len(data)} bytes, at most {MAX_SNAPSHOT_BYTES}")
    if not (data.startswith(JPEG_START) and data.endswith(JPEG_END)):
        raise PayloadError("a snapshot is the bytes of one JPEG")
    return SnapshotPicture(camera, bytes(data))


def object_event(device_id: str, event: EventPayload) -> ObjectEvent | None:
    """The object event an ``EventPayload`` carries; None for other kinds or a ``data`` of another shape."""
    if event.kind not in OBJECT_EVENT_KINDS:
        return None
    data = event.data
    camera, label, track = data.get("camera"), data.get("label"), data.get("track_id")
    place = data.get("zone") or data.get("line") or ""
    if not (_name(camera) and _name(label) and _int(track) and isinstance(place, str) and len(place) <= MAX_NAME):
        return None
    return ObjectEvent(device_id, event.ts, event.kind, camera, label, track, place, event.message)
