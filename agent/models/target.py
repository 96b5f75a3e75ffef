"""Where a deployment lands: the first stage's slot, or a second stage's, keyed by model name.

The deployment manager (agent.models.manager) runs every deployment, probation and rollback
against one ``DeployTarget``: the slot the model serves from, how its engines are loaded, the
inputs a new version is warmed up on, the serving version's counters for probation, and what
follows a swap there. The first stage is the manager's own target (the detector the pipeline
reads); a second stage (a recognizer a camera names in ``results.second_stage``) is built by
agent.results.stages, above this package, and handed to the manager by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from agent.models.behaviour import OutputWindow
from agent.models.loader import EngineOptions
from agent.runtime import EngineSlot, Serving

__all__ = ["DeployTarget", "FeedsFor", "ReadTally", "Reads", "Role", "Stats", "Swapped"]

Swapped = Callable[[Serving, Serving | None, str], Awaitable[None]]
"""Told after a swap: the new entry, the old one (None: the slot was empty) and why."""
FeedsFor = Callable[[Serving], dict[str, np.ndarray]]
"""Inputs for a loaded model made from live data (a frame, crops), to warm it up before it serves."""
Stats = Callable[[str], dict[str, Any]]
"""A version's counters: frames, errors, nonfinite, p95_ms (agent.models.probation.judge)."""
Role = Literal["first stage", "second stage"]


class _Reading(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def confidence(self) -> float: ...


@dataclass(frozen=True)
class ReadTally:
    """What one version of a second stage read on one camera: boxes, boxes read empty, summed confidence."""

    boxes: int = 0
    empty: int = 0
    confidence: float = 0.0

    def add(self, readings: Sequence[_Reading]) -> ReadTally:
        """This tally and one frame's ``readings`` (a text and its mean per-character probability each)."""
        return ReadTally(self.boxes + len(readings), self.empty + sum(not r.text for r in readings),
                         self.confidence + sum(r.confidence for r in readings))

    def since(self, earlier: ReadTally) -> ReadTally:
        """What was read after ``earlier`` was taken of the same tally."""
        return ReadTally(self.boxes - earlier.boxes, self.empty - earlier.empty, self.confidence - earlier.confidence)

    @property
    def empty_share(self) -> float:
        return self.empty / self.boxes if self.boxes else 0.0

    @property
    def mean_confidence(self) -> float:
        return self.confidence / self.boxes if self.boxes else 0.0


Reads = Callable[[str], Mapping[str, ReadTally]]
"""A second stage's reads of one version, per camera (behavioural probation of a recognizer)."""


@dataclass(frozen=True)
class DeployTarget:
    """One model the manager deploys, rolls back and watches, and the slot it serves from.

    ``fits`` (optional) raises ``ValueError`` or an ``AgentError`` when a loaded model cannot serve
    here (a second stage: no recognizer, or a dictionary that does not fit its output); the deploy
    is then refused at validation (``does_not_fit_head``). ``outputs`` feeds behavioural probation
    of a first stage, ``reads`` of a second stage (None: not judged)."""

    name: str | None
    """The model name; None: whatever the slot serves (the first stage)."""
    role: Role
    slot: EngineSlot
    options: EngineOptions
    feeds_for: FeedsFor
    stats: Stats
    swapped: Swapped
    outputs: OutputWindow | None = None
    fits: Callable[[Serving], None] | None = None
    reads: Reads | None = None

    def model_name(self) -> str | None:
        """The name deploys to this target must carry (None: nothing serves the first stage yet)."""
        if self.name is not None:
            return self.name
        serving = self.slot.serving
        return None if serving is None else serving.name
