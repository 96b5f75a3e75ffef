"""Crash-loop protection for models: boot counting, as RAUC and greenboot do for system images.

Each start is recorded with the model version it serves (``boot.json`` in the state
folder, written atomically). A start that never reaches READY, or that ends abnormally
within ``crash_loop_window_s`` of READY, leaves its record behind unfinished; the next
start counts it. After ``crash_loop_starts`` such starts in a row with one version, that
version is quarantined in the store and ``previous`` is served. A clean stop (SIGTERM,
exit 0), or a run that outlives the window after READY, resets the count.

Whatever made the process die (an abort in a native library, a value that raises in a
task, the OOM killer, the systemd watchdog) the record tells the next start about it,
because the record is written before the model is used and only cleared once the run has
proved itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "BOOT_RECORD_FILE",
    "CRASH_LOOP_CODE",
    "CRASH_TEST_ENV",
    "BootGuard",
    "BootRecord",
    "BootState",
    "CrashLoop",
    "write_json_atomic",
]

log = structlog.get_logger(__name__)

BOOT_RECORD_FILE = "boot.json"
CRASH_LOOP_CODE = "crash_loop"
CRASH_TEST_ENV = "EDGE_AGENT_TEST_CRASH_SERVING"
"""Test-only: when set to a model version, a start serving that version aborts before READY
(read once at start). It injects a start-up fault so the crash-loop protection can be tested
through the real CLI; it is never set in the shipped unit."""


class BootState(str, Enum):
    """Where the recorded start got to. ``STARTING`` and ``READY`` left behind are failures."""

    STARTING = "starting"
    READY = "ready"
    STABLE = "stable"
    STOPPED = "stopped"


UNFINISHED = frozenset({BootState.STARTING, BootState.READY})
"""A record left in one of these states: the run it describes died before proving itself."""


@dataclass(frozen=True)
class BootRecord:
    """One start: the version served, how far it got, and the failed starts before it."""

    version: str
    state: BootState
    failures: int
    """Consecutive failed starts of ``version`` before this one."""
    started_at: float
    pid: int

    @classmethod
    def from_json(cls, data: Any) -> BootRecord | None:
        try:
            record = cls(version=str(data["version"]), state=BootState(data["state"]),
                         failures=int(data["failures"]), started_at=float(data["started_at"]),
                         pid=int(data["pid"]))
        except (KeyError, TypeError, ValueError):
            return None
        return record if record.failures >= 0 else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}


@dataclass(frozen=True)
class CrashLoop:
    """The verdict: ``version`` failed ``failures`` starts in a row and must not be served."""

    version: str
    failures: int

    @property
    def message(self) -> str:
        return (f"version {self.version} failed {self.failures} starts in a row "
                "(no READY, or an abnormal exit soon after it); quarantined")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file, fsync it, rename it over ``path``, fsync the
    folder: a kill at any moment leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BootGuard:
    """Counts failed starts per served version in ``<state_dir>/boot.json``.

    Call ``check`` before choosing the model, ``started`` once it is chosen, ``ready`` at
    READY=1, ``swapped`` when a deploy or rollback puts another version in, ``tick``
    periodically (it marks the run stable once it has outlived ``window_s`` since READY or
    the swap), ``stopped`` on a clean stop. Writes are best effort: a full disk must not
    stop the agent from starting (it then only loses the protection, and says so in the log).
    """

    def __init__(self, path: Path, max_failures: int, window_s: float) -> None:
        self.path = path
        self.max_failures = max_failures
        self.window_s = window_s
        self._last: BootRecord | None = None
        self._record: BootRecord | None = None
        self._ready_at: float | None = None
        """Monotonic time of READY or of the last swap, while the run has not proved itself."""

    def read(self) -> BootRecord | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("boot_record_unreadable", path=str(self.path), error=str(exc))
            return None
        record = BootRecord.from_json(data)
        if record is None:
            log.warning("boot_record_unreadable", path=str(self.path), error="unexpected fields")
        return record

    def failures_of(self, version: str | None) -> int:
        """Failed starts in a row of ``version``, the last one's included when it died."""
        last = self._last
        if last is None or version is None or last.version != version:
            return 0
        return last.failures + (1 if last.state in UNFINISHED else 0)

    def check(self, current: str | None) -> CrashLoop | None:
        """Read the last start's record; a ``CrashLoop`` when ``current`` is to be quarantined."""
        self._last = self.read()
        last = self._last
        if last is not None and last.state in UNFINISHED:
            log.warning("previous_start_failed", version=last.version, state=last.state.value,
                        failures=last.failures + 1, pid=last.pid)
        failures = self.failures_of(current)
        if current is not None and failures >= self.max_failures:
            return CrashLoop(current, failures)
        return None

    def started(self, version: str) -> None:
        self._write(BootRecord(version=version, state=BootState.STARTING,
                               failures=self.failures_of(version), started_at=time.time(),
                               pid=os.getpid()))

    def ready(self) -> None:
        self._ready_at = time.monotonic()
        self._advance(BootState.READY, reset=False)

    def swapped(self, version: str) -> None:
        """Another version serves (a deploy, a rollback): it must prove itself in turn, so an
        abnormal exit within the window counts against it, from a count of 0."""
        self._ready_at = time.monotonic()
        self._write(BootRecord(version=version, state=BootState.READY, failures=0,
                               started_at=time.time(), pid=os.getpid()))

    def tick(self, now: float) -> bool:
        """Mark the run stable once ``window_s`` has passed since READY or the last swap;
        ``True`` when this call did."""
        if self._ready_at is None or now - self._ready_at < self.window_s:
            return False
        self._ready_at = None
        self._advance(BootState.STABLE, reset=True)
        return True

    def stopped(self) -> None:
        self._advance(BootState.STOPPED, reset=True)

    @property
    def record(self) -> BootRecord | None:
        return self._record

    def _advance(self, state: BootState, *, reset: bool) -> None:
        if self._record is not None:
            self._write(replace(self._record, state=state,
                                failures=0 if reset else self._record.failures))

    def _write(self, record: BootRecord) -> None:
        self._record = record
        try:
            write_json_atomic(self.path, record.to_json())
        except OSError as exc:
            log.error("boot_record_not_written", path=str(self.path), state=record.state.value,
                      error=str(exc))
