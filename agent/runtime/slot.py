"""The serving slot: which engine serves the next frame, swapped between two frames.

The frame worker leases the serving entry for one frame (``with slot.lease() as
serving``). ``swap()`` is a reference switch under a lock, so the next lease gets
the new entry while a frame in flight finishes on the old one; the old engine is
closed once its last lease is released (or at once when none is out), which
gives its memory back without ever pulling an engine from under a frame. The
close itself runs on a short-lived thread, so freeing a session's memory never
delays the frame worker that released the last lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.runtime.base import Engine, EngineError

__all__ = ["EngineSlot", "Serving", "SlotEmptyError"]

log = structlog.get_logger(__name__)


CLEAR_TIMEOUT_S = 30.0
"""How long ``clear`` waits for the engines being closed (an ONNX Runtime session closes in tens of ms)."""


class SlotEmptyError(EngineError):
    """No engine has been put in the slot yet."""


@dataclass(eq=False)
class Serving:
    """One loaded model as the frame worker sees it."""

    engine: Engine
    name: str
    version: str
    sha256: str
    manifest: Any
    since: float = field(default_factory=time.time)
    folder: Any = None
    """Where the model's files are (golden inputs, manifest), when it came from a store."""
    _leases: int = field(default=0, repr=False)
    _retired: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def closed(self) -> bool:
        return self._closed


class EngineSlot:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving: Serving | None = None
        self._closers: list[threading.Thread] = []
        self._closers_lock = threading.Lock()
        """Closes start from the frame worker and the deploying thread alike; ``drain`` reads the list."""
        self.swaps = 0

    @property
    def serving(self) -> Serving | None:
        return self._serving

    @contextmanager
    def lease(self) -> Iterator[Serving]:
        with self._lock:
            serving = self._serving
            if serving is None:
                raise SlotEmptyError("no model is loaded")
            serving._leases += 1
        try:
            yield serving
        finally:
            with self._lock:
                serving._leases -= 1
                close = serving._retired and serving._leases == 0 and not serving._closed
                if close:
                    serving._closed = True
            if close:
                self._close(serving)

    def swap(self, new: Serving) -> Serving | None:
        """Serve ``new`` from the next frame on; the old entry closes after its last frame."""
        return self._replace(new)

    def clear(self, timeout: float = CLEAR_TIMEOUT_S) -> bool:
        """Retire the serving entry (at stop) and wait up to ``timeout`` for the closes under way: the
        caller's process may exit next, and an engine still closing on its thread while the interpreter
        shuts down crashed it (``model profile`` exited by SIGSEGV). An entry with a frame still in
        flight closes after that frame. True when every close started has finished."""
        self._replace(None)
        return self.drain(timeout)

    def _replace(self, new: Serving | None) -> Serving | None:
        with self._lock:
            old, self._serving = self._serving, new
            if new is not None and old is not None:
                self.swaps += 1
            close = False
            if old is not None:
                old._retired = True
                close = old._leases == 0 and not old._closed
                if close:
                    old._closed = True
        if old is not None and close:
            self._close(old)
        return old

    def _close(self, serving: Serving) -> None:
        thread = threading.Thread(target=self._close_now, args=(serving,), name="engine-close", daemon=True)
        with self._closers_lock:  # started before it is listed: drain never joins an unstarted thread
            thread.start()
            self._closers = [t for t in self._closers if t.is_alive()] + [thread]

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait for engines being closed; True when all closes finished."""
        with self._closers_lock:
            closers = list(self._closers)
        for thread in closers:
            thread.join(timeout)
        return not any(t.is_alive() for t in closers)

    @staticmethod
    def _close_now(serving: Serving) -> None:
        try:
            serving.engine.close()
        except Exception as exc:  # a failing close must not take the frame loop down
            log.warning("engine_close_failed", model=serving.name, version=serving.version, error=str(exc))
        else:
            log.info("engine_closed", model=serving.name, version=serving.version)
