"""The consumer's HTTP side: ``/metrics`` for Prometheus, ``/`` and ``/api/fleet`` for the dashboard.

Standard library only (``http.server`` in a daemon thread). The page is one
static file (agent/fleet/static/dashboard.html) with inline CSS, JavaScript and
SVG charts, so it works where nothing can be fetched from the internet; it
polls ``/api/fleet`` every two seconds, and fetches a camera's latest event
picture from ``/api/snapshot/<device>/<camera>`` (a JPEG) when it changed.

Bound to loopback unless told otherwise. On any other address a bearer token
is required for ``/metrics``, ``/api/fleet`` and ``/api/snapshot/...`` (``Authorization: Bearer <token>``);
the page itself and ``/healthz`` carry no fleet data and are served without it
(the page reads the token from its URL fragment, ``#token=...``, which browsers
never send to the server).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import structlog

from agent.fleet.consumer import Consumer
from agent.fleet.errors import FleetError

__all__ = [
    "LISTEN_HOST",
    "PROMETHEUS_CONTENT_TYPE",
    "FleetHttpServer",
    "HttpAccess",
    "ListenError",
    "parse_listen",
]

log = structlog.get_logger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LISTEN_HOST = "127.0.0.1"
"""Loopback by default: the metrics and the dashboard show the whole fleet."""
TOKEN_BYTES = 32
"""Entropy of a generated bearer token (256 bits, URL-safe base64)."""
OPEN_PATHS = frozenset({"/", "/healthz"})
"""Served without the token: the static page (no data in it) and the liveness probe."""
SNAPSHOT_PATH = "/api/snapshot/"
"""``/api/snapshot/<device>/<camera>``: the camera's latest event picture, ``image/jpeg``."""
JPEG_CONTENT_TYPE = "image/jpeg"


class ListenError(FleetError, ValueError):
    """A listen address or token file that cannot be used."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::]:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host and not text.startswith("["):
        raise ListenError(f"--listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HttpAccess:
    """Who may read the fleet's data: anyone on loopback, bearers of ``token`` elsewhere."""

    token: str | None = None
    generated: bool = False
    """True when the token was made for this run (the CLI prints it once)."""

    @classmethod
    def for_host(cls, host: str, token_file: Path | None) -> HttpAccess:
        """The token from ``token_file`` when given; else a new one when ``host`` is not loopback."""
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise ListenError(f"--token-file {token_file}: {exc.strerror or exc}") from None
            if not token:
                raise ListenError(f"--token-file {token_file} is empty")
            return cls(token)
        if is_loopback(host):
            return cls()
        return cls(secrets.token_urlsafe(TOKEN_BYTES), generated=True)

    def allows(self, path: str, authorization: str | None) -> bool:
        if self.token is None or path in OPEN_PATHS:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


def dashboard_page() -> bytes:
    return resources.files("agent.fleet").joinpath("static/dashboard.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class FleetHttpServer:
    """Serves ``/metrics`` (when ``metrics``) and the dashboard (when ``dashboard``) on one address."""

    def __init__(self, consumer: Consumer, port: int, *, metrics: bool = True, dashboard: bool = True,
                 host: str = LISTEN_HOST, access: HttpAccess | None = None) -> None:
        self.consumer = consumer
        self.access = access = access or HttpAccess.for_host(host, None)
        if access.token is None and not is_loopback(host):
            raise ListenError(f"{host} is not a loopback address: a bearer token is required")
        page = dashboard_page() if dashboard else None
        routes: dict[str, tuple[str, Any]] = {"/healthz": ("text/plain", lambda: b"ok\n")}
        pictures = consumer.picture if dashboard else None
        if metrics:
            routes["/metrics"] = (PROMETHEUS_CONTENT_TYPE, lambda: consumer.metrics.registry.render().encode())
        if page is not None:
            routes["/"] = ("text/html; charset=utf-8", lambda: page)
            routes["/api/fleet"] = ("application/json", lambda: json.dumps(consumer.snapshot()).encode())
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _handler(routes, access, pictures))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleet-http", daemon=True)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The address really bound (``0.0.0.0`` when bound to every IPv4 address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()
        log.info("fleet_http_listening", host=self.host, port=self.port, token=self.access.token is not None)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _picture_route(path: str, pictures: Callable[[str, str], bytes | None] | None) -> tuple[str, Any] | None:
    """The route of ``/api/snapshot/<device>/<camera>`` (the names URL-quoted), None when no picture came."""
    if pictures is None or not path.startswith(SNAPSHOT_PATH):
        return None
    device, sep, camera = path.removeprefix(SNAPSHOT_PATH).partition("/")
    if not sep or "/" in camera:
        return None
    jpeg = pictures(unquote(device), unquote(camera))
    return None if jpeg is None else (JPEG_CONTENT_TYPE, lambda: jpeg)


def _handler(routes: dict[str, tuple[str, Any]], access: HttpAccess,
             pictures: Callable[[str, str], bytes | None] | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            authorized = access.allows(path, self.headers.get("Authorization"))
            if path.startswith(SNAPSHOT_PATH):  # asked before the lookup: no token, no hint of what exists
                if not authorized:
                    self._unauthorized(path)
                    return
                route = _picture_route(path, pictures)
            else:
                route = routes.get(path)
            if route is None:
                self.send_error(404, f"no such page: {path}; try {', '.join(sorted(routes))}")
                return
            if not authorized:
                self._unauthorized(path)
                return
            content_type, body = route
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _unauthorized(self, path: str) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="edge-fleet"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            log.warning("fleet_http_unauthorized", path=path, client=self.client_address[0])

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("fleet_http_request", request=format % args)

    return Handler
