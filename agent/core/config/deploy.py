"""``[deploy]``: what a deployment may fetch, how a new model is warmed, and how probation judges it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.core.config.base import Section

__all__ = ["DeploySection"]


class DeploySection(Section):
    allowed_schemes: tuple[Literal["http", "https", "file"], ...] = ("https", "http", "file")
    """URL schemes a deploy may fetch from."""
    max_artifact_mb: float = Field(default=512.0, gt=0)
    """Downloads larger than this are refused (checked while streaming)."""
    public_key_file: Path | None = None
    """ed25519 public key (PEM); when set, a deploy must carry a statement signed by its private key
    (name, version, format, sha256, expiry), checked before anything is downloaded."""
    file_roots: tuple[Path, ...] = ()
    """Folders a ``file://`` deploy may read (symlinks resolved first); empty: ``file://`` is refused."""
    download_timeout_s: float = Field(default=900.0, gt=0)
    """Whole-download deadline (connect to last byte); past it the deployment fails (``download_timeout``)."""
    warmup_runs: int = Field(default=3, ge=1, le=100)
    """Inferences on a real frame before a new model may serve."""
    latency_budget_ms: float = Field(default=2000.0, gt=0)
    """A model whose warm inference takes longer than this is refused. It is measured beside the
    serving model at the loader's niceness, so it is an upper bound of the model's own latency."""
    load_nice: int = Field(default=10, ge=0, le=19)
    """Niceness while a new model's session is created and warmed beside the serving one (0: off)."""
    probation_s: float = Field(default=30.0, ge=0)
    """How long a new model is watched after the swap (a deploy may set its own)."""
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    """Probation fails when more frames than this share fail to infer."""
    max_nonfinite: int = Field(default=0, ge=0)
    """Probation fails when more frames than this give NaN/inf outputs."""
    max_latency_ratio: float = Field(default=1.5, gt=0)
    """Probation fails when the new model's p95 latency exceeds the old one's by this factor."""
    min_probation_frames: int = Field(default=10, ge=1)
    """Frames needed before probation judges error rate and latency."""
    journal_size: int = Field(default=1000, ge=10, le=1_000_000)
    """Command ids remembered (across restarts) to answer repeats without redoing them."""
