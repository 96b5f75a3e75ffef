"""RTSP recovery, measured: a real RTSP server is stopped and started again under a reading source.

``RtspServer`` runs ``rtsp_serve.py`` (GStreamer's gst-rtsp-server) in the
system Python that has GStreamer's bindings; ``measure_rtsp_recovery`` reads it
through a FrameSource (OpenCV's FFmpeg backend), takes the server away for
``outage_s``, brings it back on the same port and reports how long after its
return the first frame and the full frame rate came back. Numbers only: the
bench prints them, the transport tests hold them to the issue's bound::

    python -m agent.cli.rtsp_bench --video demo/video.mp4 --outage 3 --runs 3
"""

from __future__ import annotations

import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2

from agent.core import SourceSection
from agent.dev.base import DevError
from agent.vision import Frame, FrameSource
from agent.wire import CameraState as SourceState

__all__ = [
    "SYSTEM_PYTHON", "RecoveryResult", "RtspServer", "RtspServerError", "full_rate_at",
    "measure_rtsp_recovery", "recovery_summary", "rtsp_server_unavailable",
]

SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's (and JetPack's) Python, where python3-gi and gst-rtsp-server's typelib live."""
SERVER_SCRIPT = Path(__file__).with_name("rtsp_serve.py")
SERVER_START_TIMEOUT_S = 30.0
"""GStreamer's first start scans its plugin registry, seconds on a loaded machine."""
SERVER_STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0
FULL_RATE_SHARE = 0.9
"""A window holding this share of the video's frame rate counts as full rate."""
RATE_WINDOW_S = 1.0
"""Frames are counted over windows this long."""
SUSTAIN_S = 2.0
"""Full rate must hold this long from the frame it is credited to, so a burst of buffered frames is not it."""
WAIT_STEP_S = 0.05
PROBE_SCRIPT = (
    "import sys; import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "missing = [e for e in ('filesrc', 'decodebin', 'videoconvert', 'valve') if not Gst.ElementFactory.find(e)]; "
    "encoders = [e for e in ('x264enc', 'jpegenc') if Gst.ElementFactory.find(e)]; "
    "sys.stdout.write('missing elements: ' + ', '.join(missing) if missing else '' if encoders else "
    "'no x264enc nor jpegenc')"
)


class RtspServerError(DevError, RuntimeError):
    """The RTSP server process did not start, answer or stop as asked."""


def rtsp_server_unavailable(python: str = SYSTEM_PYTHON) -> str | None:
    """Why the RTSP server cannot run here (for a skip or a bench note), or None when it can."""
    if not Path(python).is_file():
        return f"{python} does not exist"
    try:
        done = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True,
                              timeout=SERVER_START_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"{python} took over {SERVER_START_TIMEOUT_S:g} s to load GStreamer"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"{python} cannot load gst-rtsp-server ({last}); install python3-gi gir1.2-gst-rtsp-server-1.0 "
                "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly")
    return done.stdout.strip() or None


class RtspServer:
    """``rtsp://127.0.0.1:<port>/live`` serving ``video`` from a child process; start, stop, stall, resume."""

    def __init__(self, video: Path, *, python: str = SYSTEM_PYTHON) -> None:
        self.video = video.resolve()
        self.python = python
        self.port = 0
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RtspServer:
        """Start serving, on the port of the previous start if there was one; returns once it listens."""
        if self.running:
            raise RtspServerError("the RTSP server is already running")
        self._process = subprocess.Popen(
            [self.python, str(SERVER_SCRIPT), "--video", str(self.video), "--port", str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._lines = queue.Queue()
        threading.Thread(target=_pump, args=(self._process.stdout, self._lines), daemon=True).start()
        ready = self._answer("READY", SERVER_START_TIMEOUT_S)
        self.port = int(ready.split()[1])
        return self

    def stop(self) -> None:
        """Terminate the server (its sessions end); a later ``start()`` serves on the same port."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stall(self) -> None:
        """Keep every session open but send no frame, like a camera whose encoder hangs."""
        self._command("stall")

    def resume(self) -> None:
        self._command("resume")

    def _command(self, name: str) -> None:
        if self._process is None or self._process.stdin is None or not self.running:
            raise RtspServerError(f"cannot send {name!r}: the RTSP server is not running")
        self._process.stdin.write(f"{name}\n")
        self._process.stdin.flush()
        self._answer(f"OK {name}", COMMAND_TIMEOUT_S)

    def _answer(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RtspServerError(f"the RTSP server exited before saying {prefix!r}")
            if line.startswith("FAILED"):
                raise RtspServerError(f"the RTSP server failed: {line}")
            if line.startswith(prefix):
                return line
        raise RtspServerError(f"the RTSP server did not say {prefix!r} within {timeout_s:g} s")

    def __enter__(self) -> RtspServer:
        return self if self.running else self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    if stream is not None:
        for line in stream:
            lines.put(line.strip())
    lines.put(None)


@dataclass(frozen=True)
class RecoveryResult:
    """Seconds from the RTSP server's return (it listens again) to the first frame and to full rate."""

    outage_s: float
    first_frame_s: float
    full_rate_s: float | None
    """None when full rate did not hold for SUSTAIN_S within the measurement."""
    nominal_fps: float
    reconnecting_seen: bool
    """The source showed RECONNECTING while the server was away."""
    reopens: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "outage_s": round(self.outage_s, 3), "first_frame_s": round(self.first_frame_s, 3),
            "full_rate_s": None if self.full_rate_s is None else round(self.full_rate_s, 3),
            "nominal_fps": self.nominal_fps, "reconnecting_seen": self.reconnecting_seen, "reopens": self.reopens,
        }


def full_rate_at(frames: list[tuple[float, int]], fps: float, *, share: float = FULL_RATE_SHARE,
                 window_s: float = RATE_WINDOW_S, sustain_s: float = SUSTAIN_S) -> float | None:
    """The capture time of the first frame from which every ``window_s`` window within ``sustain_s``
    holds ``share * fps`` frames; ``frames`` are (captured_at, index) of the frames taken, in order.

    Frames are counted by index, so those captured but overwritten before anyone took them count too.
    """
    if not frames:
        return None
    floor = frames[0][1] - 1

    def captured_before(moment: float) -> int:
        return max((index for at, index in frames if at < moment), default=floor)

    needed = share * fps * window_s
    steps = round((sustain_s - window_s) / WAIT_STEP_S)
    for start, _ in frames:
        if frames[-1][0] < start + sustain_s:
            return None
        windows = (start + k * WAIT_STEP_S for k in range(steps + 1))
        if all(captured_before(a + window_s) - captured_before(a) >= needed for a in windows):
            return start
    return None


def measure_rtsp_recovery(video: Path, *, outage_s: float = 3.0, settle_s: float = 3.0, after_s: float = 6.0,
                          read_timeout_s: float = 5.0, python: str = SYSTEM_PYTHON,
                          config: SourceSection | None = None) -> RecoveryResult:
    """Serve ``video`` over RTSP, read it, stop the server for ``outage_s`` and start it again.

    ``settle_s`` of frames come first, ``after_s`` of frames are watched after the return. The source
    uses ``config`` (its uri replaced) or a SourceSection with the defaults, so the figure is the
    agent's as configured. Raises RtspServerError when the server cannot run.
    """
    with RtspServer(video, python=python) as server:
        section = (config or SourceSection(read_timeout_s=read_timeout_s)).model_copy(
            update={"uri": server.url, "name": "rtsp-recovery"})
        source = FrameSource(section)
        taken: list[Frame] = []
        done = threading.Event()
        consumer = threading.Thread(target=_take_all, args=(source, taken, done), daemon=True)
        source.start()
        consumer.start()
        try:
            _wait_for(lambda: len(taken) > 0, SERVER_START_TIMEOUT_S, "no first frame from the RTSP server")
            time.sleep(settle_s)
            server.stop()
            gone = time.monotonic()
            reconnecting = _wait_for(lambda: source.state is SourceState.RECONNECTING, outage_s, None)
            time.sleep(max(0.0, gone + outage_s - time.monotonic()))
            server.start()
            back = time.monotonic()
            _wait_for(lambda: bool(taken) and taken[-1].captured_at > back, SERVER_START_TIMEOUT_S,
                      "no frame after the RTSP server came back")
            time.sleep(after_s)
        finally:
            done.set()
            source.stop()
            consumer.join()
        after = [(f.captured_at, f.index) for f in taken if f.captured_at > back]
        fps = _video_fps(video)
        full = full_rate_at(after, fps)
        return RecoveryResult(
            outage_s=outage_s, first_frame_s=after[0][0] - back,
            full_rate_s=None if full is None else full - back, nominal_fps=fps,
            reconnecting_seen=reconnecting, reopens=source.stats().reopens,
        )


def _take_all(source: FrameSource, taken: list[Frame], done: threading.Event) -> None:
    while not done.is_set():
        frame = source.get(WAIT_STEP_S)
        if frame is not None:
            taken.append(frame)


def _wait_for(condition: Callable[[], bool], timeout_s: float, failure: str | None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(WAIT_STEP_S)
    if failure is not None:
        raise RtspServerError(failure)
    return False


def _video_fps(video: Path) -> float:
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    try:
        return float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()


def recovery_summary(results: Sequence[RecoveryResult]) -> dict[str, Any]:
    """The median of each figure over ``results`` (runs that never reached full rate are counted apart)."""
    full = [r.full_rate_s for r in results if r.full_rate_s is not None]
    return {
        "median_first_frame_s": round(statistics.median(r.first_frame_s for r in results), 3),
        "median_full_rate_s": round(statistics.median(full), 3) if full else None,
        "runs": len(results), "runs_without_full_rate": len(results) - len(full),
    }
