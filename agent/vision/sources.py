"""Frame sources: a camera, a file, a network stream or a GStreamer pipeline read by its own thread.

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

What a URI names and how OpenCV opens it is :mod:`agent.vision.capture`; the
errors a source records are :mod:`agent.vision.errors`' ``SourceError`` family.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
import structlog

from agent.core import Backoff, SourceSection
from agent.vision.capture import Capture, CaptureOpener, SourceKind, check_backend, open_capture, redact_uri
from agent.vision.errors import (
    EmptyFrameError,
    SourceError,
    SourceOpenError,
    SourceReadError,
    SourceStalledError,
)
from agent.wire import CameraState

__all__ = ["DEFAULT_STOP_TIMEOUT_S", "Frame", "FrameSource", "Pacer", "SourceStats"]

log = structlog.get_logger(__name__)

STALL_SHARE = 0.8
"""A read of a live source that takes this share of read_timeout_s sat out the backend's timeout: a stall.
One that fails sooner was cut (the server went away). Backends time out a little early or late."""
DEFAULT_STOP_TIMEOUT_S = 5.0
FALLBACK_FILE_FPS = 30.0
"""A file whose container states no usable frame rate is paced at this rate."""
MAX_FILE_FPS = 1000.0
FPS_WINDOW_S = 2.0
"""``stats().fps`` counts the frames captured within this many recent seconds."""
FPS_WINDOW_FRAMES = 256
PACE_RESYNC_PERIODS = 2.0
"""A paced file this many frame periods late starts a new schedule instead of bursting."""


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
