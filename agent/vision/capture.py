"""Capture openers: what a configured source URI names, and OpenCV opening it with the right backend.

Pure checks first: ``classify_uri`` reads the text only (a V4L2 device, a GStreamer
pipeline, a network stream, a file); ``check_backend`` adds whether this OpenCV build
can read that kind. ``open_capture`` then opens it with the backend's read timeout and,
when it fails, says why (no device node, nobody answering at the host and port, a
missing file). The capture thread that reads what is opened here is
:class:`agent.vision.sources.FrameSource`; ``Capture`` is the part of a
``cv2.VideoCapture`` it uses, so a driver may bring its own opener.
"""

from __future__ import annotations

import enum
import math
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from agent.vision.errors import (
    DeviceMissingError,
    PipelineWithoutAppsinkError,
    SourceOpenError,
    SourceUnreachableError,
    UnsupportedSchemeError,
    UnsupportedSourceError,
)

__all__ = [
    "DEFAULT_READ_TIMEOUT_S",
    "JETSON_CSI_PIPELINE",
    "Capture",
    "CaptureOpener",
    "SourceKind",
    "check_backend",
    "classify_uri",
    "has_gstreamer",
    "open_capture",
    "redact_uri",
]

JETSON_CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id=0 ! "
    "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
    "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
    "appsink drop=true max-buffers=1"
)
"""A Jetson CSI camera (sensor 0, 1280x720 at 30 fps) as BGR frames; needs JetPack's OpenCV.
``drop=true max-buffers=1`` keeps appsink from queueing stale frames behind a slow reader."""

NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
REACH_PROBE_TIMEOUT_S = 2.0
"""After a failed open, a TCP connect this long says whether the server is there at all (a LAN or VPN
round trip is far shorter); the open itself already waited read_timeout_s."""
DEFAULT_READ_TIMEOUT_S = 5.0
V4L_SELECT_TIMEOUT_ENV = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"
"""OpenCV's V4L2 read timeout in whole seconds, read once per process at the first V4L2 read."""

_GSTREAMER_LINE = re.compile(r"^\s*GStreamer:\s*(\S+)", re.MULTILINE)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://.*", re.DOTALL)
_APPSINK = re.compile(r"(?:^|!)\s*appsink(?:\s|!|$)")


class SourceKind(enum.Enum):
    V4L2 = "v4l2"
    GSTREAMER = "gstreamer"
    NETWORK = "network"
    FILE = "file"


_BACKENDS = {
    SourceKind.V4L2: cv2.CAP_V4L2,
    SourceKind.GSTREAMER: cv2.CAP_GSTREAMER,
    SourceKind.NETWORK: cv2.CAP_FFMPEG,
}


def classify_uri(uri: str) -> SourceKind:
    """What kind of source a configured URI names (pure: looks at the text only).

    Raises UnsupportedSchemeError for a ``scheme://`` no kind reads (``file://`` is a file).
    """
    text = uri.strip()
    if not text:
        raise UnsupportedSourceError("the source uri is empty")
    if text.isdigit() or text.startswith("/dev/video"):
        return SourceKind.V4L2
    if "!" in text:
        return SourceKind.GSTREAMER
    scheme = _SCHEME.fullmatch(text)
    if scheme is None or scheme.group(1).lower() == "file":
        return SourceKind.FILE
    if scheme.group(1).lower() in NETWORK_SCHEMES:
        return SourceKind.NETWORK
    raise UnsupportedSchemeError(
        f"{redact_uri(text)!r} has the scheme {scheme.group(1)!r}, which no source reads; use "
        f"{', '.join(s + '://' for s in sorted(NETWORK_SCHEMES))}, a file path, a V4L2 device "
        "(0, /dev/video0) or a GStreamer pipeline ending in appsink"
    )


def redact_uri(uri: str) -> str:
    """The URI with any ``user:password@`` replaced by ``***@``, fit for logs and errors."""
    return _USERINFO.sub(r"\1***@", uri)


def has_gstreamer(build_info: str | None = None) -> bool:
    """Whether OpenCV was built with GStreamer (pip wheels are not; JetPack's OpenCV is)."""
    match = _GSTREAMER_LINE.search(cv2.getBuildInformation() if build_info is None else build_info)
    return match is not None and match.group(1).upper().startswith("YES")


def check_backend(uri: str) -> SourceKind:
    """Classify ``uri`` and make sure this OpenCV has the backend it needs."""
    kind = classify_uri(uri)
    if kind is SourceKind.GSTREAMER and _APPSINK.search(uri) is None:
        raise PipelineWithoutAppsinkError(
            f"the GStreamer pipeline {redact_uri(uri.strip())!r} has no appsink; OpenCV takes frames only "
            "from an appsink: end it with '! videoconvert ! appsink'"
        )
    if kind is SourceKind.GSTREAMER and not has_gstreamer():
        raise UnsupportedSourceError(
            f"{redact_uri(uri)!r} is a GStreamer pipeline, but this OpenCV {cv2.__version__} "
            "was built without GStreamer (cv2.getBuildInformation() says 'GStreamer: NO'); "
            "use an OpenCV built with it, such as JetPack's on Jetson"
        )
    backend = _BACKENDS.get(kind)
    if backend is not None and not cv2.videoio_registry.hasBackend(backend):
        name = cv2.videoio_registry.getBackendName(backend)
        raise UnsupportedSourceError(
            f"{redact_uri(uri)!r} needs OpenCV's {name} backend; OpenCV {cv2.__version__} lacks it"
        )
    return kind


def open_capture(uri: str, *, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> cv2.VideoCapture:
    """Open ``uri`` with the backend its kind calls for; a SourceOpenError names it when it fails."""
    kind = check_backend(uri)
    text = uri.strip()
    if kind is SourceKind.FILE:
        text = unquote(urlsplit(text).path) if _SCHEME.fullmatch(text) else text
        if not Path(text).is_file():
            raise SourceOpenError(f"video file {text!r} does not exist or is not a file")
    if kind is SourceKind.V4L2:
        _check_device(text)
        os.environ.setdefault(V4L_SELECT_TIMEOUT_ENV, str(max(1, math.ceil(read_timeout_s))))
        capture = cv2.VideoCapture(int(text) if text.isdigit() else text, cv2.CAP_V4L2)
    elif kind is SourceKind.GSTREAMER:
        capture = cv2.VideoCapture(text, cv2.CAP_GSTREAMER)
    elif cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):  # a network stream or a file
        ms = max(1, round(read_timeout_s * 1000))
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        capture = cv2.VideoCapture(text, cv2.CAP_FFMPEG, timeouts)
    else:
        capture = cv2.VideoCapture(text, cv2.CAP_ANY)
    if not capture.isOpened():
        capture.release()
        if kind is SourceKind.NETWORK:
            _check_reachable(text)
        raise SourceOpenError(f"OpenCV could not open the {kind.value} source {redact_uri(text)!r}")
    return capture


def _check_device(text: str) -> None:
    device = Path(f"/dev/video{int(text)}" if text.isdigit() else text)
    if not device.exists():
        raise DeviceMissingError(
            f"V4L2 camera {str(device)!r} (source {text!r}) does not exist: is the camera plugged in? "
            "'v4l2-ctl --list-devices' lists the cameras this machine sees"
        )
    if not os.access(device, os.R_OK | os.W_OK):
        raise SourceOpenError(
            f"V4L2 camera {str(device)!r} (source {text!r}) exists but this user may not open it: "
            "add the agent's user to the group that owns it (usually 'video')"
        )


def _check_reachable(text: str) -> None:
    """Raise SourceUnreachableError when nothing accepts a TCP connection where the stream lives."""
    parts = urlsplit(text)
    shown = redact_uri(text)
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    except ValueError as exc:
        raise SourceUnreachableError(f"{shown!r} has no usable port: {exc}") from None
    if not host:
        raise SourceUnreachableError(f"{shown!r} names no host")
    try:
        with socket.create_connection((host, port), timeout=REACH_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SourceUnreachableError(f"nothing answers at {host}:{port} for {shown!r}: {reason}") from None
    raise SourceOpenError(
        f"{host}:{port} accepts connections but OpenCV could not open the stream {shown!r}: "
        "check the path, the credentials and the codec"
    )


class Capture(Protocol):
    """What the capture thread uses of a ``cv2.VideoCapture`` (a driver's own capture may stand in)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def getBackendName(self) -> str: ...  # OpenCV's name
    def release(self) -> None: ...


CaptureOpener = Callable[[str, float], Capture]
"""Opens a URI with a read timeout in seconds: ``open_capture`` unless a caller brings its own driver."""
