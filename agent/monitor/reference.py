"""Reference statistics: what a model's inputs and outputs looked like when it was profiled.

Stored in the manifest's ``reference`` (written by ``edge-agent model profile``)
and read back by the drift monitor. Numeric statistics are histograms over bins
cut at the quantiles of the profiled sample, so that each bin held about the
same share of the reference; confidences use equal-width bins over [0, 1].
``edges`` are the interior cut points: the first and last bins are open-ended,
so no live value can fall outside::

    {"format": 1, "model": {"name", "version", "sha256"}, "task", "samples", "created", "source",
     "inputs": {"brightness" | "contrast" | "sharpness": {"edges", "counts", "mean"}},
     "outputs": {"count": {...} | null, "confidence": {...} | null,
                 "classes": {"labels", "counts"} | null}}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.core import one_of
from agent.monitor.errors import MonitorError
from agent.monitor.features import FrameSummary
from agent.monitor.stats import Binned, quantile_edges

__all__ = [
    "INPUT_METRICS",
    "REFERENCE_FORMAT",
    "Categories",
    "Distribution",
    "Reference",
    "ReferenceBuilder",
    "ReferenceDataError",
    "output_metrics",
]

REFERENCE_FORMAT: Literal[1] = 1
ReferenceTask = Literal["classify", "detect", "text_detect"]
"""The tasks a reference can describe (a recognizer's text has no distribution here)."""
REFERENCE_TASKS: tuple[ReferenceTask, ...] = get_args(ReferenceTask)
INPUT_METRICS = ("brightness", "contrast", "sharpness")
MAX_BINS = 1000
"""Bins or categories per distribution: profiles use tens; a bound keeps a manifest's cost small."""


class ReferenceDataError(MonitorError, ValueError):
    """A reference is missing, malformed, or cannot be built from the sample."""


def output_metrics(task: str) -> tuple[str, ...]:
    """Which output distributions a task has: classes and top-1 confidence, or counts and scores."""
    return ("classes", "confidence") if task == "classify" else ("count", "confidence")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Distribution(_Strict):
    edges: tuple[float, ...] = Field(max_length=MAX_BINS)
    counts: tuple[int, ...] = Field(max_length=MAX_BINS + 1)
    mean: float

    @model_validator(mode="after")
    def _shape(self) -> Distribution:
        Binned(self.edges, self.counts)
        if sum(self.counts) < 1:
            raise ValueError("a distribution needs at least one count")
        return self


class Categories(_Strict):
    labels: tuple[str, ...] = Field(min_length=1, max_length=MAX_BINS)
    counts: tuple[int, ...] = Field(max_length=MAX_BINS)

    @model_validator(mode="after")
    def _shape(self) -> Categories:
        if len(self.labels) != len(self.counts):
            raise ValueError(f"{len(self.labels)} labels but {len(self.counts)} counts")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("category labels must be unique")
        if any(c < 0 for c in self.counts) or sum(self.counts) < 1:
            raise ValueError("category counts must be >= 0 with at least one count")
        return self


class ModelInfo(_Strict):
    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputReference(_Strict):
    brightness: Distribution
    contrast: Distribution
    sharpness: Distribution


class OutputReference(_Strict):
    count: Distribution | None = None
    """Detectors: detections per frame."""
    confidence: Distribution | None = None
    """Detectors: the score of every detection; classifiers: the top-1 probability."""
    classes: Categories | None = None
    """Classifiers: the top-1 label."""


class Reference(_Strict):
    format: Literal[1] = REFERENCE_FORMAT
    model: ModelInfo
    task: ReferenceTask
    samples: int = Field(ge=1)
    """Frames profiled."""
    created: float = Field(ge=0)
    source: str
    """What was profiled (a video file, an image folder), for people reading the manifest."""
    inputs: InputReference
    outputs: OutputReference

    @classmethod
    def parse(cls, data: dict[str, Any] | Reference) -> Reference:
        """Validate a manifest's ``reference``; ReferenceDataError names the field that is wrong."""
        if isinstance(data, Reference):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ReferenceDataError(f"reference.{where}: {first['msg']}") from exc

    def distribution(self, metric: str) -> Distribution | Categories | None:
        if metric in INPUT_METRICS:
            return cast("Distribution | None", getattr(self.inputs, metric))
        return cast("Distribution | Categories | None", getattr(self.outputs, metric))


def score_edges(bins: int) -> tuple[float, ...]:
    """Equal-width bins over [0, 1] for scores: already on a common scale, often piled up near 1,
    where quantile bins would split hairs that differ from one frame to the next."""
    return tuple(float(e) for e in np.linspace(0.0, 1.0, bins + 1)[1:-1])


def _distribution(values: Sequence[float], bins: int, scores: bool = False) -> Distribution | None:
    if not values:
        return None
    edges = score_edges(bins) if scores else quantile_edges(values, bins)
    binned = Binned.of(values, edges)
    return Distribution(edges=binned.edges, counts=binned.counts, mean=sum(values) / len(values))


class ReferenceBuilder:
    """Collects the per-frame values of a profiling run and bins them into a Reference."""

    def __init__(self, task: str, labels: Sequence[str] = (), bins: int = 10) -> None:
        known = one_of(task, REFERENCE_TASKS)
        if known is None:
            raise ReferenceDataError(f"unknown task {task!r}")
        self.task: ReferenceTask = known
        self.labels = tuple(labels)
        self.bins = bins
        self.frames = 0
        self.failed = 0
        self._inputs: dict[str, list[float]] = {m: [] for m in INPUT_METRICS}
        self._counts: list[float] = []
        self._scores: list[float] = []
        self._top: list[str] = []

    def observe(self, summary: FrameSummary) -> None:
        self.frames += 1
        for metric, value in zip(INPUT_METRICS, summary.inputs, strict=True):
            self._inputs[metric].append(value)
        if summary.task is None:
            self.failed += 1
            return
        if summary.task != self.task:
            raise ReferenceDataError(f"the model's task is {self.task!r} but a prediction says "
                                 f"{summary.task!r}")
        if self.task == "classify":
            if summary.top_label is not None:
                self._top.append(summary.top_label)
                self._scores.append(summary.scores[0])
        else:
            self._counts.append(float(summary.count))
            self._scores.extend(summary.scores)

    def build(self, name: str, version: str, sha256: str, source: str) -> Reference:
        if self.frames == 0:
            raise ReferenceDataError("no frames were profiled")
        if self.failed == self.frames:
            raise ReferenceDataError(f"the model failed on all {self.frames} profiled frames")
        inputs = {m: _distribution(v, self.bins) for m, v in self._inputs.items()}
        input_dists = {m: d for m, d in inputs.items() if d is not None}
        confidence = _distribution(self._scores, self.bins, scores=True)
        outputs: dict[str, Any] = {"confidence": confidence}
        if self.task == "classify":
            labels = list(self.labels) or sorted(set(self._top))
            labels += sorted(set(self._top) - set(labels))
            outputs["classes"] = Categories(labels=tuple(labels),
                                            counts=tuple(self._top.count(lb) for lb in labels))
        else:
            outputs["count"] = _distribution(self._counts, self.bins)
        return Reference(
            model=ModelInfo(name=name, version=version, sha256=sha256), task=self.task,
            samples=self.frames, created=time.time(), source=source,
            inputs=InputReference(**input_dists), outputs=OutputReference(**outputs),
        )
