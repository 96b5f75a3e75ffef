"""What the cameras see, made into output: the second stage on crops, tracks, zones and lines,
events and counts, the results payloads and their rate, snapshots.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
"""

from __future__ import annotations

from .recognize import CtcDecoder, Reading, SecondStage, batch_crops, crop_quad

__all__ = [
    "CtcDecoder",
    "Reading",
    "SecondStage",
    "batch_crops",
    "crop_quad",
]
