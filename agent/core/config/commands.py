"""``[commands]``: signed commands from the control plane."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.core.config.base import Section

__all__ = ["CommandsSection"]


class CommandsSection(Section):
    public_key_file: Path | None = None
    """The control plane's ed25519 public key (PEM); when set, every command must be signed."""
    max_clock_skew_s: float = Field(default=120.0, gt=0, le=86_400)
    """A signed command whose ``ts`` is further than this from the device clock is refused;
    nonces are remembered for as long, so a replay within the window is refused too."""
