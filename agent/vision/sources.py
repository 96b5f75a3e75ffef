"""Frame sources: a camera, a file, a network stream or a GStreamer pipeline through OpenCV.

A capture thread (OpenCV releases the GIL while it grabs and decodes) keeps
only the newest frame in a one-slot mailbox, so inference always sees the
present and never a backlog; what it overwrites is counted as dropped. A source
that fails is reopened with capped exponential backoff; the thread never dies
of a camera. States::

    STARTING -> OPEN <-> RECONNECTING      any -> STOPPED
                OPEN -> ENDED              (a file at its end, loop=False)
                OPEN -> STALLED            (no frame arrives for read_timeout_s: the camera's fault)
                        STALLED -> OPEN | RECONNECTING     (the reopen that follows)
                OPEN <-> BLOCKED           (frames arrive, nobody takes one for read_timeout_s: the agent's)

Within an open session STALLED and BLOCKED are read off the clock by
``stats()``, as Savant tells a silent source from a slow consumer: only a stall
ends in a reopen (once the backend's read gives up); a blocked source keeps its
stream and counts what it overwrites. Reads that hang are bounded by the
backend where OpenCV allows it (FFmpeg's read timeout, V4L2's select timeout);
a GStreamer appsink cannot be bounded from OpenCV, so a hung pipeline shows
STALLED until it delivers again, and a stalled frame loop stops the systemd watchdog pings.
"""

from __future__ import annotations

import enum
import math
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import structlog

from agent.core import Backoff, SourceSection
from agent.vision.errors import VisionError
from agent.wire import CameraState

__all__ = [
    "JETSON_CSI_PIPELINE", "Capture", "CaptureOpener", "DeviceMissingError", "EmptyFrameError", "Frame",
    "FrameSource", "Pacer", "PipelineWithoutAppsinkError", "SourceError", "SourceKind", "SourceOpenError",
    "SourceReadError", "SourceStalledError", "SourceStats", "SourceUnreachableError",
    "UnsupportedSchemeError", "UnsupportedSourceError", "check_backend", "classify_uri", "has_gstreamer",
    "open_capture", "redact_uri",
]

log = structlog.get_logger(__name__)

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
STALL_SHARE = 0.8
"""A read of a live source that takes this share of read_timeout_s sat out the backend's timeout: a stall.
One that fails sooner was cut (the server went away). Backends time out a little early or late."""
REACH_PROBE_TIMEOUT_S = 2.0
"""After a failed open, a TCP connect this long says whether the server is there at all (a LAN or VPN
round trip is far shorter); the open itself already waited read_timeout_s."""
DEFAULT_READ_TIMEOUT_S = 5.0
DEFAULT_STOP_TIMEOUT_S = 5.0
FALLBACK_FILE_FPS = 30.0
"""A file whose container states no usable frame rate is paced at this rate."""
MAX_FILE_FPS = 1000.0
FPS_WINDOW_S = 2.0
"""``stats().fps`` counts the frames captured within this many recent seconds."""
FPS_WINDOW_FRAMES = 256
PACE_RESYNC_PERIODS = 2.0
"""A paced file this many frame periods late starts a new schedule instead of bursting."""
V4L_SELECT_TIMEOUT_ENV = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"
"""OpenCV's V4L2 read timeout in whole seconds, read once per process at the first V4L2 read."""

_GSTREAMER_LINE = re.compile(r"^\s*GStreamer:\s*(\S+)", re.MULTILINE)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://.*", re.DOTALL)
_APPSINK = re.compile(r"(?:^|!)\s*appsink(?:\s|!|$)")


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


@dataclass(frozen=True)
class Frame:
    """One captured image: BGR uint8 HxWx3, numbered per source from 0 without gaps or repeats."""

    index: int
    image: np.ndarray
    captured_at: float
    """``time.monotonic()`` when the frame was handed to the mailbox."""
    wall_time: float
    """``time.time()`` at the same moment, for records that leave the device."""
    source: str

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"frame index must be >= 0, got {self.index}")
        shape, dtype = self.image.shape, self.image.dtype
        if len(shape) != 3 or shape[2] != 3 or dtype != np.uint8 or 0 in shape:
            raise ValueError(f"a frame must be a non-empty HxWx3 uint8 image, got {shape} {dtype}")


@dataclass(frozen=True)
class SourceStats:
    """A snapshot of one source for health and telemetry."""

    state: CameraState
    frames_captured: int
    frames_dropped: int
    """Frames overwritten in the mailbox before anyone took them."""
    reopens: int
    """Attempts to open the source again after a failure."""
    last_error: str | None
    fps: float
    """Capture rate over the last ``FPS_WINDOW_S`` seconds."""
    opened_at: float | None
    """``time.time()`` of the latest successful open."""
    stalls: int = 0
    """Times the open source sent nothing for ``read_timeout_s`` and was reopened for it."""
    last_error_code: str | None = None
    """The ``code`` of the SourceError behind ``last_error`` (``source_unreachable``, ``source_stalled``...)."""
    last_frame_age_s: float | None = None
    """Seconds since the latest frame arrived from the source; None before the first."""


class Pacer:
    """Releases frame n at ``start + n * period``: a schedule, so decode time does not add up."""

    def __init__(self, period_s: float) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.period_s = period_s
        self._start: float | None = None
        self._next = 0

    def delay(self, now: float) -> float:
        """Seconds to wait before releasing the next frame, given the monotonic time ``now``."""
        due = now if self._start is None else self._start + self._next * self.period_s
        if self._start is None or now - due > PACE_RESYNC_PERIODS * self.period_s:
            self._start = now - self._next * self.period_s
            due = now
        self._next += 1
        return max(0.0, due - now)


class _Outcome(enum.Enum):
    FAILED = "failed"
    STALLED = "stalled"
    ENDED = "ended"
    LOOPED = "looped"
    STOPPED = "stopped"


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class Capture(Protocol):
    """What the capture thread uses of a ``cv2.VideoCapture`` (a driver's own capture may stand in)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def getBackendName(self) -> str: ...  # OpenCV's name
    def release(self) -> None: ...


CaptureOpener = Callable[[str, float], Capture]
"""Opens a URI with a read timeout in seconds: ``open_capture`` unless a caller brings its own driver."""


def _open(uri: str, read_timeout_s: float) -> Capture:
    return open_capture(uri, read_timeout_s=read_timeout_s)


class FrameSource:
    """One configured source read by its own thread; ``get()`` hands out the newest frame.

    A file with ``pace="none"`` is the one exception to "never wait for the
    consumer": it has no real time, so its reader waits until the previous
    frame was taken and every frame is seen (benchmarks, replays).

    A URI that can never work (a wrong scheme, a pipeline without appsink, a
    backend this OpenCV lacks) raises UnsupportedSourceError here, before any
    thread; whatever fails later shows in ``stats()`` (``last_error``,
    ``last_error_code``) and is retried, never raised out of the thread.
    """

    def __init__(self, config: SourceSection, condition: threading.Condition | None = None, *,
                 opener: CaptureOpener = _open) -> None:
        """``condition``: shared by the sources of one camera set, so one wait sees any new frame."""
        self.config = config
        self.kind = check_backend(config.uri)
        self._opener = opener
        self._shown_uri = redact_uri(config.uri)
        self._is_file = self.kind is SourceKind.FILE
        self._cond = condition if condition is not None else threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._slot: Frame | None = None
        self._state = CameraState.STARTING
        self._captured = 0
        self._dropped = 0
        self._reopens = 0
        self._last_error: str | None = None
        self._last_error_code: str | None = None
        self._opened_at: float | None = None
        self._stalls = 0
        self._times: deque[float] = deque(maxlen=FPS_WINDOW_FRAMES)
        self._arrived_at: float | None = None
        """Monotonic time of the latest frame, or of the open before the first one."""
        self._taken_at = 0.0
        """Monotonic time of the latest frame taken by ``get()``, or of the latest open."""
        self._awaiting_take = False
        """An unpaced file's reader waits for the consumer to take the frame in the slot."""

    @property
    def state(self) -> CameraState:
        with self._cond:
            return self._shown_state(time.monotonic())

    def _shown_state(self, now: float) -> CameraState:
        """The thread's state, with STALLED and BLOCKED read off the clock while the source is open."""
        if self._state is not CameraState.OPEN or self._arrived_at is None:
            return self._state
        bound = self.config.read_timeout_s
        silent = now - self._arrived_at >= bound
        unclaimed = self._slot is not None and now - self._taken_at >= bound
        if unclaimed and (self._awaiting_take or not silent):
            return CameraState.BLOCKED
        return CameraState.STALLED if silent else CameraState.OPEN

    def start(self) -> None:
        if self._thread is not None:
            raise SourceError(f"source {self.config.name!r} was already started")
        name = f"capture-{self.config.name}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """End the thread (it releases the capture); False if it did not end within ``timeout``."""
        self._stopping.set()
        with self._cond:
            self._state = CameraState.STOPPED
            self._slot = None
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("source_stop_timeout", source=self.config.name, timeout_s=timeout)
            return False
        return True

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout``; None on timeout/end/stop."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._slot is not None
                or self._state in (CameraState.ENDED, CameraState.STOPPED),
                max(0.0, timeout),
            )
            frame, self._slot = self._slot, None
            if frame is not None:
                self._taken_at = time.monotonic()
            self._cond.notify_all()
            return frame

    def stats(self) -> SourceStats:
        now = time.monotonic()
        with self._cond:
            recent = [t for t in self._times if now - t <= FPS_WINDOW_S]
            span = recent[-1] - recent[0] if len(recent) > 1 else 0.0
            return SourceStats(
                state=self._shown_state(now),
                frames_captured=self._captured,
                frames_dropped=self._dropped,
                reopens=self._reopens,
                last_error=self._last_error,
                fps=(len(recent) - 1) / span if span > 0 else 0.0,
                opened_at=self._opened_at,
                stalls=self._stalls,
                last_error_code=self._last_error_code,
                last_frame_age_s=now - self._times[-1] if self._times else None,
            )

    def _run(self) -> None:
        backoff = Backoff(self.config.reopen_min_s, self.config.reopen_max_s)
        looping = False
        while not self._stopping.is_set():
            outcome = self._session(backoff, looping)
            looping = outcome is _Outcome.LOOPED
            if outcome is _Outcome.ENDED:
                self._set_state(CameraState.ENDED)
                log.info("source_ended", source=self.config.name, uri=self._shown_uri)
                return
            if outcome in (_Outcome.FAILED, _Outcome.STALLED):
                self._set_state(CameraState.STALLED if outcome is _Outcome.STALLED else CameraState.RECONNECTING)
                delay = backoff.next_delay()
                (log.info if backoff.attempts == 1 else log.debug)(
                    "source_reopening", source=self.config.name, uri=self._shown_uri,
                    attempt=backoff.attempts, delay_s=round(delay, 3),
                )
                if self._stopping.wait(delay):
                    return
                with self._cond:
                    self._reopens += 1

    def _session(self, backoff: Backoff, looping: bool) -> _Outcome:
        try:
            capture = self._opener(self.config.uri, self.config.read_timeout_s)
        except SourceError as exc:
            self._fail(exc)
            return _Outcome.FAILED
        except Exception as exc:  # cv2.error, or a driver's own opener: the thread outlives it
            self._fail(SourceOpenError(f"opening {self._shown_uri!r} failed: {type(exc).__name__}: {exc}"))
            return _Outcome.FAILED
        try:
            self._opened(capture, looping)
            return self._read_all(capture, backoff)
        except SourceError as exc:
            self._fail(exc)
            return _Outcome.FAILED
        except Exception as exc:  # the capture thread outlives any decoder or driver surprise
            self._fail(SourceReadError(f"reading {self._shown_uri!r} failed: {type(exc).__name__}: {exc}"))
            return _Outcome.FAILED
        finally:
            capture.release()

    def _opened(self, capture: Capture, looping: bool) -> None:
        with self._cond:
            if self._state is not CameraState.STOPPED:
                self._state = CameraState.OPEN
            self._opened_at = time.time()
            self._arrived_at = self._taken_at = time.monotonic()
        (log.debug if looping else log.info)(
            "source_opened", source=self.config.name, uri=self._shown_uri, kind=self.kind.value,
            backend=capture.getBackendName(), width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), fps=capture.get(cv2.CAP_PROP_FPS),
        )

    def _read_all(self, capture: Capture, backoff: Backoff) -> _Outcome:
        pacer = None
        if self._is_file and self.config.pace == "native":
            fps = capture.get(cv2.CAP_PROP_FPS)
            pacer = Pacer(1.0 / (fps if 0 < fps <= MAX_FILE_FPS else FALLBACK_FILE_FPS))
        handshake = self._is_file and self.config.pace == "none"
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if self._is_file else 0
        frames = 0
        live = not self._is_file
        while not self._stopping.is_set():
            began = time.monotonic()
            ok, image = capture.read()
            waited = time.monotonic() - began
            if live and waited >= STALL_SHARE * self.config.read_timeout_s and not self._stopping.is_set():
                # The backend sat out its read timeout: the stream is silent. What a read hands over
                # now is a decoder's leftover (H.264 keeps a frame or two), not a sign of life.
                self._fail(self._stall(frames, waited))
                return _Outcome.STALLED
            if not ok or image is None:
                return self._after_last_read(frames, expected)
            if image.size == 0:
                raise EmptyFrameError(
                    f"{self._shown_uri!r} opened but delivered a zero-size frame (shape {image.shape}) "
                    f"after {frames} frames"
                )
            if pacer is not None and self._stopping.wait(pacer.delay(time.monotonic())):
                break
            if handshake:
                with self._cond:
                    self._awaiting_take = True
                    self._cond.wait_for(lambda: self._slot is None or self._stopping.is_set())
                    self._awaiting_take = False
            self._publish(_as_bgr(image))
            if frames == 0:
                backoff.reset()
            frames += 1
        return _Outcome.STOPPED

    def _after_last_read(self, frames: int, expected: int) -> _Outcome:
        if self._stopping.is_set():
            return _Outcome.STOPPED
        if not self._is_file:
            self._fail(SourceReadError(f"reading {self._shown_uri!r} failed after {frames} frames"))
            return _Outcome.FAILED
        if frames == 0:
            self._fail(SourceReadError(f"video file {self._shown_uri!r} opened but gave no frame"))
            return _Outcome.FAILED
        if frames < expected:  # short of the container's count: cut (truncated), not finished
            self._fail(SourceReadError(f"reading {self._shown_uri!r} failed at frame {frames} of {expected}"))
            return _Outcome.FAILED
        if self.config.loop:
            log.debug("source_looped", source=self.config.name, uri=self._shown_uri, frames=frames)
            return _Outcome.LOOPED
        return _Outcome.ENDED

    def _stall(self, frames: int, waited_s: float) -> SourceStalledError:
        with self._cond:
            self._stalls += 1
            silent_s = time.monotonic() - (self._arrived_at or 0.0)
        log.warning("source_stalled", source=self.config.name, uri=self._shown_uri, silent_s=round(silent_s, 2),
                    read_s=round(waited_s, 2))
        return SourceStalledError(
            f"no frame from {self._shown_uri!r} for {silent_s:.1f} s (read_timeout_s "
            f"{self.config.read_timeout_s:g}) after {frames} frames: the source is stalled"
        )

    def _publish(self, image: np.ndarray) -> None:
        captured_at, wall_time = time.monotonic(), time.time()
        with self._cond:
            if self._state is CameraState.STOPPED:
                return
            frame = Frame(self._captured, image, captured_at, wall_time, self.config.name)
            if self._slot is not None:
                self._dropped += 1
            self._slot = frame
            self._captured += 1
            self._times.append(captured_at)
            self._arrived_at = captured_at
            self._cond.notify_all()

    def _fail(self, error: SourceError) -> None:
        """Record why the source failed; a failure repeating the previous one logs at debug level."""
        with self._cond:
            repeated = self._last_error == str(error)
            self._last_error, self._last_error_code = str(error), error.code
        (log.debug if repeated else log.warning)(
            "source_failed", source=self.config.name, uri=self._shown_uri, code=error.code, error=str(error),
        )

    def _set_state(self, state: CameraState) -> None:
        with self._cond:
            if self._state is not CameraState.STOPPED:
                self._state = state
            self._cond.notify_all()
