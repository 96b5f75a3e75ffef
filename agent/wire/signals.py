"""Wire payloads of the drift, bias and leak telemetry (``telemetry/drift|bias|leak``) and the feedback command.

Each is the wire contract's Envelope (``schema_version``, ``device_id``, ``ts``,
``seq``) plus exactly what the monitor's ``snapshot()`` returns, so a publisher
writes ``DriftPayload(**envelope, **drift.snapshot())``. ``extra="forbid"`` and
strict types as every payload of the wire contract. docs/signals.md documents
the fields and their units.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.wire.commands import CommandBase, register_command
from agent.wire.payloads import Envelope, register_payload
from agent.wire.states import SignalState, SliceStatus

__all__ = [
    "MAX_FEEDBACK_ITEMS",
    "MONITOR_PAYLOADS",
    "BiasPayload",
    "DriftPayload",
    "FeedbackCommand",
    "FeedbackItem",
    "LeakPayload",
]

MAX_FEEDBACK_ITEMS = 1000
MAX_LABEL_LENGTH = 128

class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    frame_id: int = Field(ge=0, description="frame.index of the frame the label is for")
    camera: str | None = Field(default=None, min_length=1, max_length=128,
                               description="the camera the frame came from; needed when the device has several")
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_LENGTH,
                              description="the true class (classifiers)")
    positive: bool | None = Field(default=None, description="whether the frame truly is positive")

    @model_validator(mode="after")
    def _one_truth(self) -> FeedbackItem:
        if (self.label is None) == (self.positive is None):
            raise ValueError("an item carries exactly one of 'label' and 'positive'")
        return self


class FeedbackCommand(CommandBase):
    """``cmd/feedback``: ``{"id": "...", "items": [{"frame_id": 12, "positive": true}, ...]}``."""

    command_name: ClassVar[str] = "feedback"
    items: tuple[FeedbackItem, ...] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)


_S = SignalState
DriftState = Literal[_S.OK, _S.WARN, _S.ALARM, _S.NO_REFERENCE, _S.INSUFFICIENT_SAMPLES]
BiasState = Literal[_S.OK, _S.WARN, _S.ALARM, _S.INSUFFICIENT_SAMPLES, _S.NOT_APPLICABLE]
LeakState = Literal[_S.OK, _S.WARN, _S.ALARM, _S.INSUFFICIENT_SAMPLES, _S.UNAVAILABLE]
"""The states each signal's metrics can take (members of SignalState; JSON carries their values)."""


def _fraction(description: str | None = None) -> Any:
    return Field(ge=0, le=1, description=description)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ----- drift ------------------------------------------------------------------------------------


class ReferenceBrief(_Wire):
    model: str
    version: str
    samples: int = Field(ge=1, description="frames the reference was profiled on")


class DriftMetric(_Wire):
    state: DriftState
    samples: int = Field(ge=0, description="live values in the window (frames; detections for "
                                           "a detector's confidence)")
    psi: float | None = Field(ge=0, description="population stability index against the reference")
    js: float | None = Field(ge=0, le=1, description="Jensen-Shannon distance, base 2")
    mean: float | None = Field(description="mean of the live values (luma units, count, score)")
    reference_mean: float | None


class DriftPayload(Envelope):
    version: str | None = Field(description="the model version whose outputs are compared")
    reference: ReferenceBrief | None
    window: int = Field(ge=1, description="frames the window holds at most")
    samples: int = Field(ge=0, description="frames in the window now")
    metrics: dict[str, DriftMetric]


# ----- bias -------------------------------------------------------------------------------------


class SliceStats(_Wire):
    samples: int = Field(ge=0, description="frames of this slice in the window")
    status: SliceStatus = Field(strict=False)
    selection_rate: float | None = _fraction()
    mean_confidence: float | None = _fraction()


class Parity(_Wire):
    max_difference: float | None = _fraction()
    min_ratio: float | None = _fraction()


class Slicing(_Wire):
    slices: dict[str, SliceStats]
    selection_rate: Parity
    mean_confidence: Parity
    four_fifths_flag: bool = Field(description="a selection-rate ratio under 0.8: a screening flag")
    state: BiasState


class LabelledSlice(_Wire):
    samples: int = Field(ge=0, description="labelled frames of this slice")
    status: SliceStatus = Field(strict=False)
    accuracy: float | None = _fraction()
    recall: float | None = _fraction()
    fpr: float | None = _fraction()


class LabelledSlicing(_Wire):
    slices: dict[str, LabelledSlice]
    tpr_gap: float | None = _fraction()
    fpr_gap: float | None = _fraction()
    equalized_odds_gap: float | None = _fraction()
    state: BiasState


class FeedbackStats(_Wire):
    matched: int = Field(ge=0)
    unmatched: int = Field(ge=0, description="items whose frame was no longer remembered")
    slicings: dict[str, LabelledSlicing]


class BiasPayload(Envelope):
    window: int = Field(ge=1)
    samples: int = Field(ge=0)
    positive_threshold: float = _fraction()
    positive_labels: list[str]
    slicings: dict[str, Slicing]
    feedback: FeedbackStats


# ----- leak -------------------------------------------------------------------------------------


class ResourceTrend(_Wire):
    unit: Literal["MB", "count"]
    value: float | None = Field(description="latest sample, in unit")
    slope_per_hour: float | None = Field(description="Theil-Sen slope over the window, per hour")
    bound_per_hour: float = Field(gt=0)
    slope_per_swap: float | None = Field(description="Theil-Sen slope over recent swaps, per swap")
    bound_per_swap: float = Field(gt=0)
    state: LeakState


class EgressCounts(_Wire):
    checked: int = Field(ge=0)
    blocked: int = Field(ge=0)
    by_reason: dict[str, int]
    images: int = Field(default=0, ge=0, description="snapshots sent as JPEGs on snapshots/<camera>")
    image_bytes: int = Field(default=0, ge=0, description="their bytes together")


class LeakPayload(Envelope):
    samples: int = Field(ge=0)
    span_s: float = Field(ge=0, description="time covered by the samples, seconds")
    swaps: int = Field(ge=0)
    resources: dict[str, ResourceTrend]
    egress: EgressCounts | None


MONITOR_PAYLOADS: dict[str, type[Envelope]] = {
    "telemetry/drift": DriftPayload,
    "telemetry/bias": BiasPayload,
    "telemetry/leak": LeakPayload,
}
"""By topic suffix, to be merged into agent.wire.schema.PAYLOADS."""

for _suffix, _model in MONITOR_PAYLOADS.items():
    register_payload(_suffix, _model)
register_command(FeedbackCommand)
