"""The old model's baseline matched to what the camera showed the new one: a scene change is not a regression.

Behavioural probation compares the new model's outputs with the old model's frames just before the swap.
When the camera's scene changes at the swap (a camera that pans, the lights, the demo video's next photo),
the two windows are of different scenes, and a good model fails: at 5 frames a second v6's first frames of
the demo video's page and astronaut were 0.69 in score JS distance from v4's of the four photos before them
(0.27 over the whole video). So each new frame is matched to the old model's baseline frames whose input
looked alike (agent.monitor's ``InputStats``: mean luma, luma contrast, sharpness, which the drift
monitor computes on every frame anyway, within the ``[deploy] behaviour_match_*`` tolerances), and the
new model is compared with the old one on the matched frames only, each old frame weighted by the share
of the new frames it stands for (a paired comparison, by input). New frames unlike every baseline frame
are left out; a camera with too few matched frames is not judged yet (``input_moved``): probation
waits for frames like the old model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["InputTolerance", "Matched", "match_inputs"]


class InputTolerance(Protocol):
    """How far two frames' input statistics may differ and still count as the same scene."""

    @property
    def match_brightness(self) -> float: ...

    @property
    def match_contrast(self) -> float: ...

    @property
    def match_sharpness(self) -> float: ...


class _HasInputs(Protocol):
    @property
    def inputs(self) -> tuple[float, float, float]:
        """The frame's mean luma, luma contrast and sharpness (agent.monitor's ``InputStats``)."""
        ...


@dataclass(frozen=True)
class Matched:
    """Which new frames have look-alikes among the old model's, and how much each old frame stands for."""

    new: tuple[int, ...]
    """Indices of the new frames with at least one look-alike old frame."""
    weights: np.ndarray
    """Per old frame: the share of the new matched frames it stands for (they sum to ``len(new)``)."""

    @property
    def old_frames(self) -> int:
        """Distinct old frames that stand for some new frame."""
        return int(np.count_nonzero(self.weights))


def _signature(rows: Sequence[_HasInputs]) -> np.ndarray:
    """Brightness, contrast and log sharpness per row (sharpness compared as a ratio)."""
    return np.array([(brightness, contrast, math.log1p(max(sharpness, 0.0)))
                     for brightness, contrast, sharpness in (r.inputs for r in rows)],
                    dtype=np.float64).reshape(len(rows), 3)


def match_inputs(tolerance: InputTolerance, new: Sequence[_HasInputs], old: Sequence[_HasInputs]) -> Matched:
    """Each new frame matched to every old frame within ``tolerance`` on all three statistics; a matched new
    frame spreads a weight of one evenly over its look-alikes."""
    limits = np.array([tolerance.match_brightness, tolerance.match_contrast, math.log(tolerance.match_sharpness)])
    if not new or not old:
        return Matched((), np.zeros(len(old)))
    alike = np.all(np.abs(_signature(new)[:, None, :] - _signature(old)[None, :, :]) <= limits, axis=2)
    per_new = alike.sum(axis=1)
    matched = per_new > 0
    weights = (alike[matched] / per_new[matched, None]).sum(axis=0)
    return Matched(tuple(int(i) for i in np.flatnonzero(matched)), weights)
