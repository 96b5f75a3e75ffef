"""``[live_view]``: the annotated MJPEG page of each camera, on loopback unless a token guards it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from agent.core.config.base import Section

__all__ = ["LiveViewSection"]


class LiveViewSection(Section):
    """The live view: an HTTP page with each camera's annotated MJPEG stream (docs/operations.md)."""

    enabled: bool = True
    """On by default: it listens on loopback only, and costs nothing until a client watches."""
    listen: str = "127.0.0.1:8090"
    """``host:port`` to listen on (port 0: any free one). Beyond loopback it needs ``token_file``."""
    token_file: Path | None = None
    """A file holding the bearer token (``Authorization: Bearer ...`` or ``?token=``); when set, every
    request needs it, on loopback too."""
    max_fps: float = Field(default=5.0, gt=0, le=30)
    """Most frames a second a stream sends (and the frames a second encoded per camera)."""
    jpeg_quality: int = Field(default=80, ge=10, le=100)
    """JPEG quality of the streamed frames and snapshots."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdecimal() or int(port) > 65535:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8090)")
        return value

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> LiveViewSection:
        if self.enabled and not self.loopback and self.token_file is None:
            raise ValueError(f"listen {self.listen!r} is beyond loopback: set token_file (a bearer token "
                             "is required there) or listen on 127.0.0.1")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        """Whether only this device can reach it (127.0.0.0/8, ::1, localhost)."""
        host = self.host
        return host in ("localhost", "::1") or host.startswith("127.")
