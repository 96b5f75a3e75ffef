"""A real HTTP MJPEG camera on loopback: ``multipart/x-mixed-replace`` JPEG parts of the demo video.

Made on the tests' ``LoopbackServer`` (the standard library's ``http.server``), the way cheap IP cameras and
``mjpg-streamer`` serve ``/video.mjpg``: one response that never ends, one JPEG
per part, paced at the video's frame rate and looping. ``stall()`` keeps every
connection open but sends nothing (a camera that hangs); ``stop()`` closes the
listening socket and every stream, ``start()`` listens again on the same port.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2

from tests.support.http import LoopbackServer, QuietHandler

BOUNDARY = "edgeagentframe"
JPEG_QUALITY = 85
PATH = "/video.mjpg"


def encode_video(video: Path) -> tuple[list[bytes], float]:
    """Every frame of ``video`` as JPEG bytes, and the video's frame rate."""
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    fps = capture.get(cv2.CAP_PROP_FPS)
    parts = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok, "OpenCV could not encode a frame of the demo video"
        parts.append(jpeg.tobytes())
    capture.release()
    assert parts, f"{video} gave no frame"
    return parts, fps


class MjpegServer:
    """An MJPEG camera at ``url``; a context manager that stops it on exit."""

    def __init__(self, video: Path) -> None:
        self.parts, self.fps = encode_video(video)
        self.port = 0
        self.sent = 0
        self._running = threading.Event()
        self._stalled = threading.Event()
        self._http: LoopbackServer | None = None
        self._streams: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def start(self) -> MjpegServer:
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path != PATH:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                with server._lock:
                    server._streams.add(self.connection)
                with suppress(OSError):
                    server._stream(self.wfile)

        self._running.set()
        self._http = LoopbackServer(Handler, port=self.port)
        self.port = self._http.port
        return self

    def _stream(self, out: Any) -> None:
        period = 1.0 / self.fps
        start, n = time.monotonic(), 0
        while self._running.is_set():
            if self._stalled.is_set():
                time.sleep(period)
                start, n = time.monotonic(), 0
                continue
            jpeg = self.parts[n % len(self.parts)]
            out.write(
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                + jpeg + b"\r\n"
            )
            out.flush()
            self.sent += 1
            n += 1
            time.sleep(max(0.0, start + n * period - time.monotonic()))

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def stop(self) -> None:
        """Stop listening and cut every open stream, like a camera that loses power."""
        self._running.clear()
        if self._http is not None:
            self._http.close()
            self._http = None
        with self._lock:
            for connection in self._streams:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._streams.clear()

    def __enter__(self) -> MjpegServer:
        return self.start() if self._http is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
