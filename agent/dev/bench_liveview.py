"""``make bench``'s live view run: the pipeline's frames/s with the live view serving a client against off.

In each round, alternating so that machine noise hits both: the pipeline on the demo video
(``pace = none``) with no live view, then with the agent's ``LiveView`` as a frame observer,
its HTTP server on loopback and one client reading the camera's MJPEG stream for the whole
run (the server draws and encodes at most ``max_fps`` JPEGs a second, in its own threads).
Reported: frames/s off and on and their ratio; the stream's JPEGs a second as the client got
them; the observer's cost per frame (frame thread: a reference kept under a lock); and one
picture's drawing and encoding (the server's work per JPEG) on a demo frame with its boxes.

Numbers only; nothing here asserts a timing.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from pathlib import Path

import cv2

from agent.core import LiveViewSection, SourceSection
from agent.dev.base import DevError, FpsOf, Report, TimedObserver
from agent.device import BOUNDARY, LiveView, annotate
from agent.models import EngineOptions, ModelStore, load_serving
from agent.monitor import LatencyRecorder
from agent.runtime import EngineSlot
from agent.vision import Detection, Frame, FrameResult, FrameSource, Pipeline

__all__ = ["CAMERA", "bench_liveview"]

CAMERA = "bench"
"""The name the bench's single source gives its frames (agent.dev.bench's ``_source``)."""
CLIENT_TIMEOUT_S = 10.0
"""The client's read timeout: the stream sends a JPEG at least every frame period while frames come."""
FIRST_FRAME_S = 30.0
"""The live view waits this long for its first inferred frame before the bench gives up."""
ENCODE_REPEATS = 30
"""Pictures drawn and encoded for the per-JPEG cost (median)."""
READ_BYTES = 65536
ENCODE_THREADS = 2
"""ORT threads of the model that finds the boxes drawn in the per-JPEG measurement (as the bench's pipeline)."""

class _StreamClient:
    """One viewer: reads the camera's MJPEG stream in a thread and counts the JPEGs it got."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.jpegs = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._started = 0.0
        self._ended = 0.0
        self._thread = threading.Thread(target=self._read, name="liveview-bench-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        marker = f"--{BOUNDARY}".encode()
        try:
            with urllib.request.urlopen(self.url, timeout=CLIENT_TIMEOUT_S) as stream:
                self._started = time.perf_counter()
                tail = b""
                while not self._stop.is_set():
                    chunk = stream.read1(READ_BYTES)
                    if not chunk:
                        break
                    data = tail + chunk
                    self.jpegs += data.count(marker)
                    tail = data[-len(marker) + 1:]
        except OSError as exc:
            if not self._stop.is_set():
                self.error = str(exc)
        finally:
            self._ended = time.perf_counter()

    def stop(self) -> float:
        """Stop reading (the live view's stop ends the stream); the JPEGs a second it got."""
        self._stop.set()
        self._thread.join(CLIENT_TIMEOUT_S)
        span = self._ended - self._started
        return self.jpegs / span if span > 0 else 0.0


def _watched(fps_of: FpsOf, settings: LiveViewSection) -> dict[str, float]:
    """Pipeline frames/s with the live view observing and one client streaming the camera."""
    view = LiveView(settings, lambda: [CAMERA], lambda camera: None)
    timed = TimedObserver(view.observe)
    url = view.start()
    client = _StreamClient(f"{url}cameras/{CAMERA}/stream.mjpg")
    started = threading.Event()

    def first_frame(result: FrameResult) -> None:
        timed(result)
        if not started.is_set():
            started.set()
            client.start()

    try:
        fps = fps_of([first_frame])
    finally:
        view.stop()
        stream_fps = client.stop() if started.is_set() else 0.0
    if client.error is not None:
        raise DevError(f"live view bench: the stream client failed: {client.error}")
    return {"fps": fps, "stream_fps": stream_fps, "encoded": view.encoded, "failures": view.failures.count,
            "observe_us": timed.seconds / max(timed.calls, 1) * 1e6}


def _encode_ms(demo: Path, store: ModelStore, settings: LiveViewSection) -> tuple[float, int]:
    """Median ms to draw and encode one picture of the demo's first frame with its boxes; the boxes."""
    capture = cv2.VideoCapture(str(demo / "video.mp4"))
    ok, image = capture.read()
    capture.release()
    if not ok:
        raise DevError(f"live view bench: cannot read {demo / 'video.mp4'}")
    slot = EngineSlot()
    slot.swap(load_serving(store.current("text-det"), EngineOptions(threads=ENCODE_THREADS)))
    source = FrameSource(SourceSection(uri=str(demo / "video.mp4"), name=CAMERA))  # never started
    try:
        result = Pipeline(source, slot, LatencyRecorder(1)).process(
            Frame(index=0, image=image, captured_at=time.monotonic(), wall_time=time.time(), source=CAMERA))
    finally:
        slot.clear()
    items = result.prediction.items if result.prediction is not None else ()
    boxes = tuple(d for d in items if isinstance(d, Detection))
    times = []
    for _ in range(ENCODE_REPEATS):
        began = time.perf_counter()
        cv2.imencode(".jpg", annotate(image, boxes, None), [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000, len(boxes)


def bench_liveview(demo: Path, store: ModelStore, frames: int, rounds: int, fps_of: FpsOf, report: Report) -> None:
    """Live view with a client against off, ``rounds`` alternating rounds of ``frames`` frames each."""
    settings = LiveViewSection(listen="127.0.0.1:0")
    installed = store.current("text-det")
    report(f"\n== live view serving a client vs off ({installed.manifest.name} {installed.manifest.version}, "
           f"{frames} frames x {rounds} rounds, one MJPEG client, max_fps {settings.max_fps:g}, "
           f"quality {settings.jpeg_quality}) ==")
    off: list[float] = []
    on: list[dict[str, float]] = []
    for i in range(rounds):
        off.append(fps_of([]))
        on.append(_watched(fps_of, settings))
        w = on[-1]
        report(f"round {i + 1}: off {off[-1]:.2f} fps | watched {w['fps']:.2f} fps | stream {w['stream_fps']:.2f} "
               f"JPEG/s, {w['encoded']:.0f} encoded, failures {w['failures']:.0f} | observer "
               f"{w['observe_us']:.1f} us/frame")
    f_off, f_on = statistics.median(off), statistics.median(w["fps"] for w in on)
    report(f"live view off        {f_off:7.2f} fps (median)")
    report(f"live view watched    {f_on:7.2f} fps  ratio {f_on / f_off:.3f}")
    report(f"stream to the client {statistics.median(w['stream_fps'] for w in on):7.2f} JPEG/s (median; at most "
           f"max_fps)")
    report(f"observer (frame thread) {statistics.median(w['observe_us'] for w in on):.1f} us/frame (median of rounds)")
    ms, boxes = _encode_ms(demo, store, settings)
    report(f"one picture drawn and encoded (server thread, 640x480, {boxes} boxes) {ms:.2f} ms (median of "
           f"{ENCODE_REPEATS})")
