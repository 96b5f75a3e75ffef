"""Builders of the payloads of what the cameras see (agent.wire.results): results, object events, counts.

They turn the frame loop's objects (predictions, tracked objects, zone and line events,
second-stage readings) into the wire models, in pixels and normalised to the frame.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.results.recognize import Reading
from agent.results.tracker import TrackedObject
from agent.results.zones import ResultEvent
from agent.vision import Classification, Detection, Prediction
from agent.wire import (
    BoxItem,
    ClassifyResult,
    ClassItem,
    CountsPayload,
    DetectResult,
    EventPayload,
    ModelRef,
    ObjectEventData,
    ResultsPayload,
    TextItem,
    TextResult,
    clip_text,
)

__all__ = ["counts_payload", "event_payload", "results_payload"]


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
