"""The live view: an HTTP page on the device with each camera's annotated MJPEG stream.

For setting up cameras, zones and lines, and for checking a model by eye. A pipeline
observer keeps, per camera, a reference to the latest inferred frame and its prediction
(no copy, no encoding: the frame thread only swaps a reference under a lock). JPEGs are
drawn and encoded in the HTTP server's threads, only while a client asks, at most
``max_fps`` a second per camera, once per frame however many clients watch. Drawing or
encoding that fails is counted and logged sparsely (``live_view_failed``), never raised
into inference.

Served: ``/`` (a page of every camera), ``/cameras/<name>/stream.mjpg``
(``multipart/x-mixed-replace``) and ``/cameras/<name>/snapshot.jpg``. Boxes (polygons
for text), labels and scores are drawn, with the camera's zones and lines from its
``results`` table. Each box is labelled ``#<track id> <label> <score>`` on a filled tag of the
box colour: the id of the track the box continued on that frame, as the results publisher's
tracker gave it (``tracks_of``, called on the frame thread right after the publisher saw the
frame); a box not tracked (yet, or results off) has no ``#``. The page lists each camera's
tracked objects as they were when it was served (``<ul class="tracks">``).
"""

from __future__ import annotations

import hmac
import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import cv2
import numpy as np
import structlog

from agent.core import LiveViewSection, ResultsSettings
from agent.device.errors import DeviceError
from agent.monitor import FailureCount
from agent.results import TrackedObject
from agent.vision import Detection, FrameResult

__all__ = ["BOX_COLOR", "LABEL_TEXT_COLOR", "LiveView", "LiveViewError", "annotate", "box_label"]

log = structlog.get_logger(__name__)

BOX_COLOR = (255, 0, 255)
"""BGR magenta: a colour the demo's photos hardly hold, so a drawn box stands out (and a test can find it)."""
ZONE_COLOR = (255, 200, 0)
"""BGR light blue for zones."""
LINE_COLOR = (0, 255, 255)
"""BGR yellow for lines."""
THICKNESS = 2
"""Pixels: visible on a 640x480 frame, thin enough not to hide small text."""
LABEL_SCALE = 0.5
"""OpenCV font scale of the labels."""
LABEL_TEXT_COLOR = (255, 255, 255)
"""BGR white: a box's label is written in it on a filled tag of ``BOX_COLOR``, readable on any photo."""
LABEL_PAD = 2
"""Pixels of tag around a box's label text."""
BOUNDARY = "liveviewframe"
"""The multipart boundary of the MJPEG stream."""
FRAME_WAIT_S = 5.0
"""A stream or snapshot waits this long for a camera's first frame before answering 503."""
MAX_STREAMS = 8
"""Streams served at once: a set-up page, not a video server; each stream is a thread (the JPEG is shared)."""
CLIENT_TIMEOUT_S = 10.0
"""A client that takes no bytes for this long is dropped, so a stalled viewer never holds a thread."""
MAX_TOKEN_BYTES = 4096
"""A token file larger than this is not a token."""


class LiveViewError(DeviceError):
    """The live view could not start (a token file that cannot be read)."""


TracksOf = Callable[[str, int], tuple[TrackedObject, ...]]
"""``tracks_of(camera, frame_id)``: the tracked objects of that camera's frame (empty when it has none)."""


@dataclass(frozen=True)
class _Latest:
    frame_id: int
    image: np.ndarray
    detections: tuple[Detection, ...]
    tracked: tuple[TrackedObject, ...] = ()


@dataclass
class _Encoded:
    frame_id: int
    jpeg: bytes
    at: float


def box_label(detection: Detection, track_id: int | None) -> str:
    """What is written by a box: ``#<track id> <label> <score>``, without the ``#`` part when not tracked."""
    text = f"{detection.label} {detection.score:.2f}"
    return text if track_id is None else f"#{track_id} {text}"


def annotate(image: np.ndarray, detections: tuple[Detection, ...], results: ResultsSettings | None,
             tracked: tuple[TrackedObject, ...] = ()) -> np.ndarray:
    """A copy of ``image`` with the zones, lines, boxes (polygons for text) and their labels drawn;
    a box that continued a track in ``tracked`` is labelled with the track's id."""
    out: np.ndarray = image.copy()
    track_of = {id(t.detection): t.track_id for t in tracked if t.detection is not None}
    if results is not None:
        for zone in results.zones:
            points = np.array(zone.polygon, dtype=np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [points], True, ZONE_COLOR, THICKNESS)
            cv2.putText(out, zone.name, tuple(points[0, 0]), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, ZONE_COLOR, 1)
        for line in results.lines:
            start = (round(line.start[0]), round(line.start[1]))
            cv2.line(out, start, (round(line.end[0]), round(line.end[1])), LINE_COLOR, THICKNESS)
            cv2.putText(out, line.name, start, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, LINE_COLOR, 1)
    for detection in detections:
        x1, y1, x2, y2 = (round(v) for v in detection.box)
        if detection.polygon is not None:
            points = np.array([(round(x), round(y)) for x, y in detection.polygon], dtype=np.int32)
            cv2.polylines(out, [points.reshape(-1, 1, 2)], True, BOX_COLOR, THICKNESS)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOR, THICKNESS)
        _tag(out, box_label(detection, track_of.get(id(detection))), x1, y1)
    return out


def _tag(out: np.ndarray, text: str, x: int, y: int) -> None:
    """``text`` on a filled tag of the box colour whose bottom-left is the box's top-left corner
    (inside the frame when the box touches its top)."""
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)
    bottom = max(y, height + baseline + 2 * LABEL_PAD)
    cv2.rectangle(out, (x, bottom - height - baseline - 2 * LABEL_PAD), (x + width + 2 * LABEL_PAD, bottom),
                  BOX_COLOR, cv2.FILLED)
    cv2.putText(out, text, (x + LABEL_PAD, bottom - baseline - LABEL_PAD), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE,
                LABEL_TEXT_COLOR, 1, cv2.LINE_AA)


class LiveView:
    """The pipeline observer and the HTTP server of the live view.

    ``cameras()`` names the cameras served now; ``settings_of(camera)`` gives a camera's
    ``results`` table (its zones and lines), None when it has none; ``tracks_of`` (``TracksOf``)
    the tracked objects of a frame, for the track ids (None: no ids drawn).
    """

    def __init__(self, settings: LiveViewSection, cameras: Callable[[], list[str]],
                 settings_of: Callable[[str], ResultsSettings | None], tracks_of: TracksOf | None = None) -> None:
        self.settings = settings
        self.cameras = cameras
        self.settings_of = settings_of
        self.tracks_of = tracks_of
        self.token = _read_token(settings.token_file)
        self._latest: dict[str, _Latest] = {}
        self._encoded: dict[str, _Encoded] = {}
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.failures = FailureCount("live_view_failed")
        """Frames whose drawing or encoding failed, and observer calls that raised: counted, logged sparsely."""
        self.encoded = 0
        self.clients = 0
        self._clients_lock = threading.Lock()

    # ----- the frame thread ---------------------------------------------------------------
    def observe(self, result: FrameResult) -> None:
        """The pipeline observer: keeps a reference to the camera's latest inferred frame; never raises."""
        try:
            prediction = result.prediction
            if prediction is None:
                return
            detections = tuple(d for d in prediction.items if isinstance(d, Detection))
            index = result.frame.index
            tracked = self.tracks_of(result.camera, index) if self.tracks_of is not None else ()
            latest = _Latest(index, result.frame.image, detections, tracked)
            with self._lock:
                self._latest[result.camera] = latest
        except Exception as exc:  # the live view must never stop inference
            self.failures.failed(result.camera, exc)

    # ----- encoding (HTTP threads) --------------------------------------------------------
    def jpeg(self, camera: str) -> _Encoded | None:
        """The camera's latest frame, annotated and encoded; re-encoded at most ``max_fps`` a second."""
        with self._encode_lock:
            cached = self._encoded.get(camera)
            now = time.monotonic()
            if cached is not None and now - cached.at < 1.0 / self.settings.max_fps:
                return cached
            with self._lock:
                latest = self._latest.get(camera)
            if latest is None:
                return cached
            if cached is not None and cached.frame_id == latest.frame_id:
                return cached
            try:
                picture = annotate(latest.image, latest.detections, self.settings_of(camera), latest.tracked)
                ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
                if not ok:
                    raise ValueError("cv2.imencode refused the frame")
            except Exception as exc:  # a bad frame costs its picture, never the server
                self.failures.failed(camera, exc)
                return cached
            self.encoded += 1
            encoded = self._encoded[camera] = _Encoded(latest.frame_id, data.tobytes(), now)
            return encoded

    def wait_jpeg(self, camera: str) -> _Encoded | None:
        deadline = time.monotonic() + FRAME_WAIT_S
        while not self._stopping.is_set():
            encoded = self.jpeg(camera)
            if encoded is not None or time.monotonic() > deadline:
                return encoded
            self._stopping.wait(1.0 / self.settings.max_fps)
        return None

    # ----- the server ---------------------------------------------------------------------
    def start(self) -> str:
        """Listen and serve in a thread; returns the page's URL (with the actual port)."""
        server = ThreadingHTTPServer((self.settings.host, self.settings.port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="live-view", daemon=True)
        self._thread.start()
        url = f"http://{self._shown_host}:{server.server_address[1]}/"
        log.info("live_view_started", url=url, token=self.token is not None)
        return url

    @property
    def _shown_host(self) -> str:
        host = self.settings.host
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        return f"http://{self._shown_host}:{self._server.server_address[1]}/"

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            log.info("live_view_stopped", **self.health())

    def health(self) -> dict[str, Any]:
        """The live view's counters (logged when it stops)."""
        return {"url": self.url, "clients": self.clients, "encoded": self.encoded, "failures": self.failures.count}

    def watching(self, change: int) -> bool:
        """Count a stream in (+1; False when ``MAX_STREAMS`` are served already) or out (-1)."""
        with self._clients_lock:
            if change > 0 and self.clients >= MAX_STREAMS:
                return False
            self.clients += change
            return True

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pause(self) -> None:
        """Wait one frame period of the stream (less when the view stops)."""
        self._stopping.wait(1.0 / self.settings.max_fps)

    def authorized(self, header: str | None, query: dict[str, list[str]]) -> bool:
        if self.token is None:
            return True
        given = header.removeprefix("Bearer ").strip() if header and header.startswith("Bearer ") else None
        if given is None:
            given = (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def tracked(self, camera: str) -> tuple[TrackedObject, ...]:
        """The tracked objects of the camera's latest inferred frame."""
        with self._lock:
            latest = self._latest.get(camera)
        return latest.tracked if latest is not None else ()

    def page(self, token: str | None) -> str:
        suffix = f"?token={quote(token)}" if token else ""
        cards = "".join(
            f'<figure><figcaption>{html.escape(name)}</figcaption>'
            f'<img src="/cameras/{quote(name)}/stream.mjpg{suffix}" alt="{html.escape(name)}">'
            f'<a href="/cameras/{quote(name)}/snapshot.jpg{suffix}">snapshot</a>'
            f'<ul class="tracks">{self._track_items(name)}</ul></figure>'
            for name in self.cameras())
        return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>edge-agent live view</title>"
                "<style>body{font-family:sans-serif;margin:8px;background:#222;color:#eee}"
                "figure{display:inline-block;margin:4px;vertical-align:top}a{color:#9cf}"
                "ul.tracks{font-size:12px;max-height:8em;overflow:auto}</style></head>"
                f"<body><h1>edge-agent live view</h1>{cards or '<p>no camera enabled</p>'}</body></html>")


    def _track_items(self, camera: str) -> str:
        return "".join(f'<li data-track="{t.track_id}">#{t.track_id} {html.escape(t.label)} {t.score:.2f}</li>'
                       for t in self.tracked(camera))


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()[:MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise LiveViewError(f"live_view.token_file {path}: {exc.strerror or exc}") from exc
    token = data.decode("utf-8", errors="replace").strip()
    if not token or len(data) > MAX_TOKEN_BYTES:
        raise LiveViewError(f"live_view.token_file {path}: empty or not a token")
    return token


def _handler(view: LiveView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-agent-live-view"
        timeout = CLIENT_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:
            return  # the agent's log is structured; requests are not logged one by one

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if not view.authorized(self.headers.get("Authorization"), query):
                self._plain(HTTPStatus.UNAUTHORIZED, "a bearer token is required (Authorization or ?token=)")
                return
            parts = [unquote(part) for part in url.path.strip("/").split("/")]
            if url.path == "/":
                token = query["token"][0] if query.get("token") else None
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", view.page(token).encode())
            elif len(parts) == 3 and parts[0] == "cameras" and parts[1] in view.cameras():
                if parts[2] == "snapshot.jpg":
                    self._snapshot(parts[1])
                elif parts[2] == "stream.mjpg":
                    self._stream(parts[1])
                else:
                    self._plain(HTTPStatus.NOT_FOUND, "not found")
            else:
                self._plain(HTTPStatus.NOT_FOUND, "not found")

        def _snapshot(self, camera: str) -> None:
            encoded = view.wait_jpeg(camera)
            if encoded is None:
                self._plain(HTTPStatus.SERVICE_UNAVAILABLE, f"no inferred frame of {camera} yet")
                return
            self._send(HTTPStatus.OK, "image/jpeg", encoded.jpeg)

        def _stream(self, camera: str) -> None:
            if not view.watching(+1):
                self._plain(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_STREAMS} streams are served already")
                return
            sent = -1
            try:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                while not view.stopping:
                    encoded = view.jpeg(camera)
                    if encoded is not None and encoded.frame_id != sent:
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(encoded.jpeg)}\r\n\r\n".encode())
                        self.wfile.write(encoded.jpeg + b"\r\n")
                        self.wfile.flush()
                        sent = encoded.frame_id
                    view.pause()
            except OSError:
                pass  # the client went away or stalled past CLIENT_TIMEOUT_S
            finally:
                view.watching(-1)

        def _plain(self, status: HTTPStatus, text: str) -> None:
            self._send(status, "text/plain; charset=utf-8", (text + "\n").encode())

        def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    return Handler
