"""Probation: is the new model at least as healthy as the one it replaced?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.models.behaviour import BehaviourBounds

__all__ = ["Probation", "ProbationVerdict", "judge"]


@dataclass(frozen=True)
class Probation:
    window_s: float
    max_error_rate: float
    max_nonfinite: int
    max_latency_ratio: float
    min_frames: int = 10
    behaviour: BehaviourBounds | None = None
    """Bounds on what the new model outputs (agent.models.behaviour); None: not judged."""


@dataclass(frozen=True)
class ProbationVerdict:
    ok: bool
    reason: str
    final: bool = False
    """Enough frames were seen to decide."""
    detail: dict[str, Any] = field(default_factory=dict)


def judge(p: Probation, new: dict[str, Any], old: dict[str, Any] | None, final: bool) -> ProbationVerdict:
    """Compare the new model's counters with the old one's.

    ``new``/``old`` hold ``frames``, ``errors``, ``nonfinite`` and ``p95_ms`` (inference
    latency over that model's recent frames, None when unknown).
    """
    frames = new["frames"]
    detail = {"frames": frames, "errors": new["errors"], "nonfinite": new["nonfinite"], "p95_ms": new["p95_ms"]}
    if old is not None:
        detail["old_p95_ms"] = old["p95_ms"]
    if new["nonfinite"] > p.max_nonfinite:
        return ProbationVerdict(False, f"{new['nonfinite']} frames with NaN/inf outputs (bound {p.max_nonfinite})",
                                True, detail)
    enough = frames >= p.min_frames
    if enough:
        rate = new["errors"] / frames
        if rate > p.max_error_rate:
            return ProbationVerdict(False, f"error rate {rate:.3f} over the bound {p.max_error_rate}", True, detail)
        if old is not None and old["p95_ms"] and new["p95_ms"] and old["frames"] >= p.min_frames:
            ratio = new["p95_ms"] / old["p95_ms"]
            detail["latency_ratio"] = round(ratio, 3)
            if final and ratio > p.max_latency_ratio:
                return ProbationVerdict(
                    False, f"p95 latency {new['p95_ms']:.1f} ms is {ratio:.2f}x the old model's "
                    f"{old['p95_ms']:.1f} ms (bound {p.max_latency_ratio}x)", True, detail)
    return ProbationVerdict(True, "", enough, detail)
