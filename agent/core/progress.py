"""How long work says how far it is: the callback the tools and the fleet rollout take, agent/cli/ renders.

A tool calls ``progress(stage, done, total)`` as units of work finish: frames
calibrated, layers measured, epochs trained, devices settled. ``stage`` names
one piece of work and stays the same while it runs (a person sees one bar per
stage); ``total`` is 0 while the amount is not known; ``note`` is a short figure
that goes with the step (a loss). The tool neither prints nor knows whether a
person is watching: agent/cli/progress.py draws bars on a terminal and plain
lines when piped.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["UNKNOWN_TOTAL", "Progress"]

UNKNOWN_TOTAL = 0
"""``total`` of a stage whose amount of work is not known yet (a search that ends when it finds)."""


class Progress(Protocol):
    """``progress(stage, done, total, note=...)``: ``done`` of ``total`` units of ``stage`` are finished."""

    def __call__(self, stage: str, done: int, total: int, *, note: str = "") -> None: ...
