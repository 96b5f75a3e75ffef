"""The payloads of what the cameras see: results, object events, counts.

Built as agent/mqtt/schema.py builds its payloads (``extra="forbid"``, frozen, strict,
no NaN, the ``Envelope`` of schema version, device id, device timestamp and per-topic
sequence number), and registered in its ``PAYLOADS`` as ``results/+`` and ``counts/+``
(one model for every camera's topic) for ``edge-agent schema`` and the egress guard. Object events travel on the
events topic as the existing ``EventPayload`` (kind, severity, message) whose ``data``
is an ``ObjectEventData``, so that topic keeps one schema.

One prediction schema per head, told apart by ``head``: ``detect`` (boxes in pixels
and normalised to the frame, score, label, track id), ``classify`` (top-k),
``text_detect`` (text polygons, with the recognized text when a second stage ran).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..mqtt.schema import MAX_TEXT_LENGTH, Envelope, EventPayload, ModelRef, clip_text, register_payload
from ..vision.heads import Classification, Detection, Prediction
from .recognize import Reading
from .tracker import TrackedObject
from .zones import ResultEvent

__all__ = [
    "COUNTS_SUFFIX",
    "RESULTS_SUFFIX",
    "BoxItem",
    "ClassItem",
    "ClassifyResult",
    "CountsPayload",
    "DetectResult",
    "ObjectEventData",
    "ResultsPayload",
    "TextItem",
    "TextResult",
    "counts_payload",
    "event_payload",
    "results_payload",
]

MAX_ITEMS = 10_000
"""As many boxes as a head may keep (HeadSpec.max_detections' bound)."""
MAX_NAME = 128
Px = Annotated[float, Field(allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class BoxItem(_Wire):
    box: tuple[Px, Px, Px, Px] = Field(description="x1, y1, x2, y2 in frame pixels")
    box_norm: tuple[Unit, Unit, Unit, Unit] = Field(description="the box over the frame's width and height, clipped")
    score: Unit
    label: str = Field(max_length=MAX_NAME)
    track_id: int | None = Field(default=None, ge=0, description="null: not tracked (yet)")


class ClassItem(_Wire):
    label: str = Field(max_length=MAX_NAME)
    score: Unit


class TextItem(_Wire):
    polygon: tuple[tuple[Px, Px], ...] = Field(min_length=3, max_length=64, description="frame pixels")
    polygon_norm: tuple[tuple[Unit, Unit], ...] = Field(min_length=3, max_length=64)
    score: Unit = Field(description="the detector's")
    text: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH, description="null: no second stage")
    text_confidence: Unit | None = None
    track_id: int | None = Field(default=None, ge=0)


class DetectResult(_Wire):
    head: Literal["detect"] = "detect"
    boxes: tuple[BoxItem, ...] = Field(max_length=MAX_ITEMS)


class ClassifyResult(_Wire):
    head: Literal["classify"] = "classify"
    top_k: tuple[ClassItem, ...] = Field(min_length=1, max_length=1000)


class TextResult(_Wire):
    head: Literal["text_detect"] = "text_detect"
    texts: tuple[TextItem, ...] = Field(max_length=MAX_ITEMS)


class ResultsPayload(Envelope):
    """One frame's prediction on ``<prefix>/<id>/results/<camera>``."""

    camera: str = Field(min_length=1, max_length=MAX_NAME)
    frame_id: int = Field(ge=0, description="per camera, rising")
    capture_ts: float = Field(ge=0, description="unix time the frame was captured, seconds")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    model: ModelRef
    second_stage: ModelRef | None = Field(default=None, description="the model that read the crops")
    prediction: DetectResult | ClassifyResult | TextResult = Field(discriminator="head")


class ObjectEventData(_Wire):
    """``EventPayload.data`` of an object, zone or line event."""

    camera: str = Field(min_length=1, max_length=MAX_NAME)
    frame_id: int = Field(ge=0)
    capture_ts: float = Field(ge=0)
    track_id: int = Field(ge=0)
    label: str = Field(max_length=MAX_NAME)
    box: tuple[Px, Px, Px, Px]
    zone: str | None = Field(default=None, max_length=MAX_NAME)
    line: str | None = Field(default=None, max_length=MAX_NAME)
    direction: Literal["in", "out"] | None = None
    dwell_s: float | None = Field(default=None, ge=0)
    snapshot: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH, description="where its picture went")


class CountsPayload(Envelope):
    """Objects per zone and label now, retained on ``<prefix>/<id>/counts/<camera>``."""

    camera: str = Field(min_length=1, max_length=MAX_NAME)
    frame_id: int = Field(ge=0)
    capture_ts: float = Field(ge=0)
    zones: dict[str, dict[str, Count]]


def _norm(value: float, size: int) -> float:
    return min(max(value / size, 0.0), 1.0)


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _track_ids(tracked: Sequence[TrackedObject]) -> dict[int, int]:
    """id() of each detection of this frame -> the track id it continued."""
    return {id(t.detection): t.track_id for t in tracked if t.detection is not None}


def _prediction(prediction: Prediction, width: int, height: int, tracks: dict[int, int],
                readings: Sequence[Reading] | None) -> DetectResult | ClassifyResult | TextResult:
    if prediction.task == "classify":
        return ClassifyResult(top_k=tuple(
            ClassItem(label=c.label, score=_unit(c.score)) for c in prediction.items if isinstance(c, Classification)
        ))
    detections = [d for d in prediction.items if isinstance(d, Detection)]
    if prediction.task == "detect":
        return DetectResult(boxes=tuple(
            BoxItem(box=d.box, box_norm=(_norm(d.box[0], width), _norm(d.box[1], height),
                                         _norm(d.box[2], width), _norm(d.box[3], height)),
                    score=_unit(d.score), label=d.label, track_id=tracks.get(id(d)))
            for d in detections
        ))
    if readings is not None and len(readings) != len(detections):
        raise ValueError(f"{len(readings)} readings for {len(detections)} text boxes")
    items = []
    for i, d in enumerate(detections):
        x1, y1, x2, y2 = d.box
        polygon = d.polygon or ((x1, y1), (x2, y1), (x2, y2), (x1, y2))
        reading = readings[i] if readings is not None else None
        items.append(TextItem(
            polygon=polygon,
            polygon_norm=tuple((_norm(x, width), _norm(y, height)) for x, y in polygon),
            score=_unit(d.score),
            text=None if reading is None else clip_text(reading.text),
            text_confidence=None if reading is None else _unit(reading.confidence),
            track_id=tracks.get(id(d)),
        ))
    return TextResult(texts=tuple(items))


def results_payload(
    *, device_id: str, seq: int, ts: float, camera: str, frame_id: int, capture_ts: float,
    width: int, height: int, model: ModelRef, prediction: Prediction,
    tracked: Sequence[TrackedObject] = (), readings: Sequence[Reading] | None = None,
    second_stage: ModelRef | None = None,
) -> ResultsPayload:
    """The results of one frame; each detection gets the track id of the track it continued."""
    return ResultsPayload(
        device_id=device_id, seq=seq, ts=ts, camera=camera, frame_id=frame_id, capture_ts=capture_ts,
        width=width, height=height, model=model, second_stage=second_stage,
        prediction=_prediction(prediction, width, height, _track_ids(tracked), readings),
    )


def _message(event: ResultEvent) -> str:
    where = event.zone or event.line
    text = f"{event.label} #{event.track_id} {event.kind.replace('_', ' ')}"
    if where:
        text += f" {where}"
    if event.direction:
        text += f" ({event.direction})"
    if event.dwell_s is not None:
        text += f" after {event.dwell_s:.1f} s"
    return text


def event_payload(*, device_id: str, seq: int, ts: float, camera: str, event: ResultEvent,
                  snapshot: str | None = None) -> EventPayload:
    """An object, zone or line event as the events topic carries it (severity ``info``)."""
    data = ObjectEventData(
        camera=camera, frame_id=event.frame_id, capture_ts=event.ts, track_id=event.track_id,
        label=event.label, box=event.box, zone=event.zone, line=event.line, direction=event.direction,
        dwell_s=None if event.dwell_s is None else max(0.0, event.dwell_s), snapshot=snapshot,
    )
    return EventPayload(device_id=device_id, seq=seq, ts=ts, kind=event.kind, severity="info",
                        message=clip_text(_message(event)), data=data.model_dump(mode="json"))


def counts_payload(*, device_id: str, seq: int, ts: float, camera: str, frame_id: int, capture_ts: float,
                   counts: dict[str, dict[str, int]]) -> CountsPayload:
    """A camera's counts (``Scene.counts()``) for the retained counts topic."""
    return CountsPayload(device_id=device_id, seq=seq, ts=ts, camera=camera, frame_id=frame_id,
                         capture_ts=capture_ts, zones=counts)


RESULTS_SUFFIX = "results/+"
"""``PAYLOADS`` key of every ``results/<camera>`` topic."""
COUNTS_SUFFIX = "counts/+"
"""``PAYLOADS`` key of every retained ``counts/<camera>`` topic."""
register_payload(RESULTS_SUFFIX, ResultsPayload)
register_payload(COUNTS_SUFFIX, CountsPayload)
