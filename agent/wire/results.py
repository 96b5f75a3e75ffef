"""The wire payloads of what the cameras see: results, object events, counts.

Built as agent/wire/schema.py builds its payloads (``extra="forbid"``, frozen, strict,
no NaN, the ``Envelope`` of schema version, device id, device timestamp and per-topic
sequence number), and registered in its ``PAYLOADS`` as ``results/+`` and ``counts/+``
(one model for every camera's topic) for ``edge-agent schema`` and the egress guard. Object events travel on the
events topic as the existing ``EventPayload`` (kind, severity, message) whose ``data``
is an ``ObjectEventData``, so that topic keeps one schema.

One prediction schema per head, told apart by ``head``: ``detect`` (boxes in pixels
and normalised to the frame, score, label, track id), ``classify`` (top-k),
``text_detect`` (text polygons, with the recognized text when a second stage ran).
agent.results.payloads builds them from the frame loop's objects.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.wire.base import MAX_TEXT_LENGTH
from agent.wire.payloads import Envelope, ModelRef, register_payload

__all__ = [
    "COUNTS_SUFFIX",
    "MAX_ITEMS",
    "MAX_NAME",
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


RESULTS_SUFFIX = "results/+"
"""``PAYLOADS`` key of every ``results/<camera>`` topic."""
COUNTS_SUFFIX = "counts/+"
"""``PAYLOADS`` key of every retained ``counts/<camera>`` topic."""
register_payload(RESULTS_SUFFIX, ResultsPayload)
register_payload(COUNTS_SUFFIX, CountsPayload)
