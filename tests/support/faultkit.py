"""What the fault tests look at from outside the agent: its outbox on disk, what a subscriber
received, its JSON log, and a model server that can be made slow."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from agent.models.bundle import pack_bundle
from tests.support.http import LoopbackServer, QuietHandler
from tests.support.mosquitto import ProbeMessage

__all__ = [
    "ArtifactServer",
    "OutboxView",
    "bundle",
    "log_events",
    "payloads_by_seq",
    "short_clip",
]


@dataclass(frozen=True)
class OutboxView:
    """A read-only look at an agent's SQLite outbox (WAL lets it read beside the writer)."""

    path: Path

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()

    def messages(self) -> list[tuple[str, bytes]]:
        return [(t, bytes(p)) for t, p in self._query("SELECT topic, payload FROM messages ORDER BY key")]

    def count(self, topic: str) -> int:
        return int(self._query("SELECT COUNT(*) FROM messages WHERE topic = ?", (topic,))[0][0])

    def sequences(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._query("SELECT key, last FROM sequences")}

    def dropped(self) -> int:
        rows = self._query("SELECT value FROM counters WHERE name = 'dropped'")
        return int(rows[0][0]) if rows else 0


def payloads_by_seq(messages: Iterable[ProbeMessage | tuple[str, bytes]]) -> dict[int, list[bytes]]:
    """Every payload received, grouped by its ``seq`` (duplicates kept, to be inspected)."""
    grouped: dict[int, list[bytes]] = {}
    for message in messages:
        payload = message.payload if isinstance(message, ProbeMessage) else message[1]
        grouped.setdefault(int(json.loads(payload)["seq"]), []).append(payload)
    return grouped


def log_events(text: str, event: str | None = None) -> list[dict[str, Any]]:
    """The agent's JSON log lines (those that parse), optionally only one event."""
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if event is None or record.get("event") == event:
            events.append(record)
    return events


def short_clip(source: Path, dest: Path, frames: int) -> Path:
    """The first ``frames`` frames of a real video as a new mp4, so a test need not wait out
    the whole demo video for the capture to reach the end of the file."""
    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS) or 15.0
    writer: cv2.VideoWriter | None = None
    try:
        for _ in range(frames):
            ok, image = capture.read()
            if not ok:
                break
            if writer is None:
                height, width = image.shape[:2]
                writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            writer.write(image)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not dest.is_file() or dest.stat().st_size == 0:
        raise RuntimeError(f"OpenCV could not write {dest}")
    return dest


def bundle(model_dir: Path, dest: Path) -> tuple[Path, str]:
    """A deployable bundle of a demo model and its sha256."""
    pack_bundle(model_dir, dest)
    return dest, hashlib.sha256(dest.read_bytes()).hexdigest()


class ArtifactServer:
    """Serves files of a folder over loopback HTTP; optionally slowly, reporting bytes sent.

    ``chunk_delay_s`` sleeps between 64 KiB chunks, so a download can be caught halfway.
    """

    CHUNK = 64 * 1024

    def __init__(self, folder: Path, chunk_delay_s: float = 0.0) -> None:
        self.folder = folder
        self.chunk_delay_s = chunk_delay_s
        self.sent = 0
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = server.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for start in range(0, len(data), server.CHUNK):
                        self.wfile.write(data[start:start + server.CHUNK])
                        with server._lock:
                            server.sent += min(server.CHUNK, len(data) - start)
                        if server.chunk_delay_s:
                            time.sleep(server.chunk_delay_s)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._http = LoopbackServer(Handler)

    def url(self, name: str) -> str:
        return self._http.url(name)

    def close(self) -> None:
        self._http.close()
