"""The vision package's error family: frame sources, cameras and transforms."""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core import AgentError

__all__ = [
    "DeviceMissingError",
    "EmptyFrameError",
    "PipelineWithoutAppsinkError",
    "SourceError",
    "SourceOpenError",
    "SourceReadError",
    "SourceStalledError",
    "SourceUnreachableError",
    "UnsupportedSchemeError",
    "UnsupportedSourceError",
    "VisionError",
]


class VisionError(AgentError):
    """A source, a camera or a transform cannot be used as asked."""


class SourceError(VisionError):
    """A frame source cannot be used as asked; ``code`` names the kind of failure for telemetry.

    Each kind of failure is a subclass that names its code in its class line
    (``class SourceStalledError(SourceReadError, code="source_stalled")``).
    """

    code: ClassVar[str] = "source_failed"

    def __init_subclass__(cls, *, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code


class UnsupportedSourceError(SourceError, code="source_unsupported"):
    """The URI can never be opened by this OpenCV build (empty, or a backend it lacks)."""


class UnsupportedSchemeError(UnsupportedSourceError, code="source_scheme"):
    """The URI has a scheme (``ftp://``, ``rtmp://``) that no source kind reads."""


class PipelineWithoutAppsinkError(UnsupportedSourceError, code="source_no_appsink"):
    """A GStreamer pipeline string with no ``appsink``, the only element OpenCV takes frames from."""


class SourceOpenError(SourceError, code="source_open_failed"):
    """The source could not be opened now; it may work on a later attempt."""


class SourceUnreachableError(SourceOpenError, code="source_unreachable"):
    """Nothing accepts a connection at the stream's host and port (refused, unknown host, timeout)."""


class DeviceMissingError(SourceOpenError, code="source_device_missing"):
    """The V4L2 device node does not exist: no camera is plugged in at that index or path."""


class SourceReadError(SourceError, code="source_read_failed"):
    """An open source stopped delivering: the server closed the stream or the decoder failed."""


class SourceStalledError(SourceReadError, code="source_stalled"):
    """An open source delivered no frame for ``read_timeout_s``; it is reopened."""


class EmptyFrameError(SourceReadError, code="source_empty_frame"):
    """The source opened but handed over a frame with no pixels (a zero width, height or depth)."""
