"""The vision package's error family: frame sources, cameras and transforms."""

from __future__ import annotations

from typing import ClassVar

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
    """A frame source cannot be used as asked; ``code`` names the kind of failure for telemetry."""

    code: ClassVar[str] = "source_failed"


class UnsupportedSourceError(SourceError):
    """The URI can never be opened by this OpenCV build (empty, or a backend it lacks)."""

    code = "source_unsupported"


class UnsupportedSchemeError(UnsupportedSourceError):
    """The URI has a scheme (``ftp://``, ``rtmp://``) that no source kind reads."""

    code = "source_scheme"


class PipelineWithoutAppsinkError(UnsupportedSourceError):
    """A GStreamer pipeline string with no ``appsink``, the only element OpenCV takes frames from."""

    code = "source_no_appsink"


class SourceOpenError(SourceError):
    """The source could not be opened now; it may work on a later attempt."""

    code = "source_open_failed"


class SourceUnreachableError(SourceOpenError):
    """Nothing accepts a connection at the stream's host and port (refused, unknown host, timeout)."""

    code = "source_unreachable"


class DeviceMissingError(SourceOpenError):
    """The V4L2 device node does not exist: no camera is plugged in at that index or path."""

    code = "source_device_missing"


class SourceReadError(SourceError):
    """An open source stopped delivering: the server closed the stream or the decoder failed."""

    code = "source_read_failed"


class SourceStalledError(SourceReadError):
    """An open source delivered no frame for ``read_timeout_s``; it is reopened."""

    code = "source_stalled"


class EmptyFrameError(SourceReadError):
    """The source opened but handed over a frame with no pixels (a zero width, height or depth)."""

    code = "source_empty_frame"
