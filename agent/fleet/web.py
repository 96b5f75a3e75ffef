"""The consumer's HTTP side: ``/metrics`` for Prometheus, ``/`` and ``/api/fleet`` for the dashboard.

Standard library only (``http.server`` in a daemon thread). The page is one
static file (agent/fleet/static/dashboard.html) with inline CSS, JavaScript and
SVG charts, so it works where nothing can be fetched from the internet; it
polls ``/api/fleet`` every two seconds.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import structlog

from .consumer import Consumer

__all__ = ["PROMETHEUS_CONTENT_TYPE", "FleetHttpServer"]

log = structlog.get_logger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LISTEN_HOST = "0.0.0.0"


def dashboard_page() -> bytes:
    return resources.files("agent.fleet").joinpath("static/dashboard.html").read_bytes()


class FleetHttpServer:
    """Serves ``/metrics`` (when ``metrics``) and the dashboard (when ``dashboard``) on one port."""

    def __init__(self, consumer: Consumer, port: int, *, metrics: bool = True, dashboard: bool = True,
                 host: str = LISTEN_HOST) -> None:
        self.consumer = consumer
        page = dashboard_page() if dashboard else None
        routes: dict[str, tuple[str, Any]] = {"/healthz": ("text/plain", lambda: b"ok\n")}
        if metrics:
            routes["/metrics"] = (PROMETHEUS_CONTENT_TYPE, lambda: consumer.metrics.registry.render().encode())
        if page is not None:
            routes["/"] = ("text/html; charset=utf-8", lambda: page)
            routes["/api/fleet"] = ("application/json", lambda: json.dumps(consumer.snapshot()).encode())
        self._server = ThreadingHTTPServer((host, port), _handler(routes))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleet-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("fleet_http_listening", port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(routes: dict[str, tuple[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            route = routes.get(path)
            if route is None:
                self.send_error(404, f"no such page: {path}; try {', '.join(sorted(routes))}")
                return
            content_type, body = route
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("fleet_http_request", request=format % args)

    return Handler
