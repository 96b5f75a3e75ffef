"""One loopback HTTP server for the tests: the standard library's threading server on 127.0.0.1.

``LoopbackServer`` serves a handler class in a daemon thread on a free port (or a given one, to
come back on after ``close()``), optionally behind TLS; ``QuietHandler`` keeps request lines out
of the test output. The artifact, range, trickle and MJPEG servers are handlers on it.
"""

from __future__ import annotations

import http.server
import re
import socketserver
import ssl
import threading
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any, ClassVar

__all__ = ["LOOPBACK", "LoopbackServer", "QuietHandler", "RangeHandler"]

LOOPBACK = "127.0.0.1"


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing (the tests' output stays readable)."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class RangeHandler(QuietHandler):
    """Serves one body at any path with HTTP Range support, which FFmpeg needs to read an mp4 over HTTP."""

    body: ClassVar[bytes] = b""

    @classmethod
    def serving(cls, body: bytes) -> type[RangeHandler]:
        """A handler class that serves ``body``."""
        return type("ServingRange", (cls,), {"body": body})

    def do_GET(self) -> None:
        start, end = 0, len(self.body) - 1
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start, end = int(wanted[1]), int(wanted[2] or end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(self.body[start : end + 1])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    """A handler still streaming (a trickle, an MJPEG client) never holds ``close()`` up."""


class LoopbackServer:
    """``handler`` served on 127.0.0.1 from a daemon thread until ``close()``; a context manager.

    ``httpd`` is the server itself (handlers reach test state through ``self.server``)."""

    def __init__(self, handler: Callable[..., socketserver.BaseRequestHandler], *, port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.httpd = _Server((LOOPBACK, port), handler)
        self.scheme = "http" if tls is None else "https"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` (``/`` added in front when missing)."""
        return f"{self.scheme}://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
