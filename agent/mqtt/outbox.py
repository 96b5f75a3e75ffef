"""Where non-retained messages wait until the broker has acknowledged them.

The session writes every telemetry, event and reply message into an ``Outbox``
and a single sender drains it in order while connected. ``MemoryOutbox`` is
bounded and drops the oldest message when full, and forgets everything when the
process ends. ``SqliteOutbox`` keeps them in a SQLite database (WAL mode) under
the state directory, so they survive a restart, a kill and a power loss, and
keeps the per-topic sequence numbers beside them (``PersistentSequencer``): a
message and the number it carries are saved in one transaction, so after a
restart the numbers continue where they stopped and a consumer can prove that
nothing was lost, or see how much the drop counter says was.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from agent.mqtt.schema import Sequencer

__all__ = [
    "DEFAULT_OUTBOX_CAPACITY",
    "DEFAULT_OUTBOX_MAX_AGE_S",
    "MemoryOutbox",
    "Outbox",
    "OutboxError",
    "OutboxItem",
    "PersistentSequencer",
    "SqliteOutbox",
]

log = structlog.get_logger(__name__)

DEFAULT_OUTBOX_CAPACITY = 10_000
"""Messages kept while the broker is away; at 1 message/s, close to three hours."""
DEFAULT_OUTBOX_MAX_AGE_S = 86_400.0
"""Messages older than this (a day) are dropped unsent: stale telemetry helps nobody."""


SQLITE_TIMEOUT_S = 5.0
"""How long a write waits for a lock (only this process writes; a safety bound)."""
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " key INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL, created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sequences (key TEXT PRIMARY KEY, last INTEGER NOT NULL)",
)
"""AUTOINCREMENT: a key is never handed out twice, even after the table was emptied,
so an ``ack(key)`` of a batch sent before can never remove a newer message."""
DROPPED = "dropped"


class OutboxError(RuntimeError):
    """The outbox database cannot be opened or created; the message names the file."""


@dataclass(frozen=True)
class OutboxItem:
    key: int
    """Increases with every put; ``ack(key)`` removes this item and everything older."""
    topic: str
    payload: bytes
    qos: int


class Outbox(Protocol):
    def put(self, topic: str, payload: bytes, qos: int) -> None: ...

    def peek_batch(self, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` items, oldest first, without removing them."""
        ...

    def ack(self, key: int) -> None:
        """Remove every item whose key is <= ``key`` (already dropped ones are no matter)."""
        ...

    @property
    def depth(self) -> int: ...

    @property
    def dropped(self) -> int:
        """Messages discarded (oldest first) because the outbox was full."""
        ...


class MemoryOutbox:
    """A bounded FIFO in memory: lost when the process ends, oldest dropped when full."""

    def __init__(self, capacity: int = DEFAULT_OUTBOX_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[OutboxItem] = deque()
        self._next_key = 1
        self._dropped = 0

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self._dropped += 1
        self._items.append(OutboxItem(self._next_key, topic, payload, qos))
        self._next_key += 1

    def peek_batch(self, limit: int) -> list[OutboxItem]:
        return [self._items[i] for i in range(min(limit, len(self._items)))]

    def ack(self, key: int) -> None:
        while self._items and self._items[0].key <= key:
            self._items.popleft()

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def dropped(self) -> int:
        return self._dropped


class SqliteOutbox:
    """A bounded FIFO in a SQLite database: survives restarts, oldest dropped first.

    Bounded by ``max_messages`` and by age (``max_age_s``, by the time a message was
    put); what is dropped is counted, and the count is saved with the queue.
    Messages keep their payload byte for byte, so their timestamps and sequence
    numbers are the original ones when they are finally sent. ``durable`` makes
    every change reach the disk before it returns (``synchronous=FULL``), so a
    power loss keeps what was put; without it a process crash still keeps it.

    A write that fails (disk full, I/O error) does not raise: the message is
    counted as dropped and the failure logged, because telemetry must never stop
    the agent. A database that cannot be read is moved aside and a new one started.
    """

    def __init__(
        self,
        path: Path,
        max_messages: int = DEFAULT_OUTBOX_CAPACITY,
        max_age_s: float = DEFAULT_OUTBOX_MAX_AGE_S,
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if not max_age_s > 0:
            raise ValueError(f"outbox max_age_s must be > 0, got {max_age_s}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        """Sequence numbers handed out but not yet saved; saved with the next message."""
        self._unsaved_drops = 0
        self._failing = False
        self._db = self._open(durable)
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        self._dropped = self._counter(DROPPED)
        with self._lock:
            self._write(lambda db: None)
        log.info(
            "mqtt_outbox_opened", path=str(self.path), depth=self._depth, dropped=self._dropped
        )

    # --- opening ----------------------------------------------------------------------------

    def _open(self, durable: bool) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot create its folder: {exc}") from exc
        try:
            return self._connect(durable)
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
            log.error(
                "mqtt_outbox_unreadable", path=str(self.path), error=str(exc), moved_to=str(aside)
            )
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.replace(Path(f"{aside}{suffix}"))
            try:
                return self._connect(durable)
            except sqlite3.Error as again:
                raise OutboxError(f"outbox {self.path}: cannot create it: {again}") from again

    def _connect(self, durable: bool) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=SQLITE_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode is {mode}, WAL was asked for")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            for statement in SCHEMA:
                db.execute(statement)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # --- the Outbox protocol ----------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        created = self._clock()

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO messages (topic, payload, qos, created) VALUES (?, ?, ?, ?)",
                (topic, payload, qos, created),
            )
            self._depth += 1

        with self._lock:
            if not self._write(insert, with_pending=True):
                self._unsaved_drops += 1

    def peek_batch(self, limit: int) -> list[OutboxItem]:
        with self._lock:
            if self._depth and not self._write(lambda db: None):
                return []
            try:
                rows = self._db.execute(
                    "SELECT key, topic, payload, qos FROM messages ORDER BY key LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                self._report_failure(exc)
                return []
        return [OutboxItem(int(k), str(t), bytes(p), int(q)) for k, t, p, q in rows]

    def ack(self, key: int) -> None:
        def delete(db: sqlite3.Connection) -> None:
            self._depth -= db.execute("DELETE FROM messages WHERE key <= ?", (key,)).rowcount

        with self._lock:
            self._write(delete)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        return self._dropped + self._unsaved_drops

    def sequencer(self, immediate: Iterable[str] = ()) -> PersistentSequencer:
        """Sequence numbers that continue across restarts, saved in this database.

        A number is saved in the same transaction as the next message put, so a
        number is never saved for a message that was lost in a crash. Keys in
        ``immediate`` (retained topics, which do not pass through the outbox) are
        saved at once instead.
        """
        with self._lock:
            rows = self._db.execute("SELECT key, last FROM sequences").fetchall()
        return PersistentSequencer(self, {str(k): int(v) for k, v in rows}, frozenset(immediate))

    def close(self) -> None:
        with self._lock:
            self._write(lambda db: None, with_pending=True)
            self._db.close()

    # --- writing ----------------------------------------------------------------------------

    def _stage_sequence(self, key: str, value: int, immediate: bool) -> None:
        with self._lock:
            if immediate:
                self._write(lambda db: self._save_sequence(db, key, value))
            else:
                self._pending[key] = max(value, self._pending.get(key, 0))

    @staticmethod
    def _save_sequence(db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute(
            "INSERT INTO sequences (key, last) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET last = MAX(last, excluded.last)",
            (key, value),
        )

    def _write(
        self, change: Callable[[sqlite3.Connection], None], *, with_pending: bool = False
    ) -> bool:
        """One transaction: ``change``, the bounds, the drop count (and pending numbers).

        Called with the lock held. False (and nothing changed) when the database failed.
        """
        depth, drops = self._depth, self._unsaved_drops
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                change(self._db)
                expired = self._enforce_bounds(self._db)
                for key, value in self._pending.items() if with_pending else ():
                    self._save_sequence(self._db, key, value)
                if expired or drops:
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (DROPPED, self._dropped + expired + drops),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._depth = depth
            self._report_failure(exc)
            return False
        if expired or drops:
            self._dropped += expired + drops
            self._unsaved_drops -= drops
            log.warning("mqtt_outbox_dropped", dropped=expired, total_dropped=self._dropped,
                        depth=self._depth)
        if with_pending:
            self._pending.clear()
        if self._failing:
            self._failing = False
            log.info("mqtt_outbox_recovered", path=str(self.path), depth=self._depth)
        return True

    def _enforce_bounds(self, db: sqlite3.Connection) -> int:
        """Delete messages too old or beyond ``max_messages``, oldest first; how many went."""
        cutoff = self._clock() - self.max_age_s
        expired = db.execute("DELETE FROM messages WHERE created < ?", (cutoff,)).rowcount
        self._depth -= expired
        excess = self._depth - self.max_messages
        if excess > 0:
            db.execute(
                "DELETE FROM messages WHERE key IN (SELECT key FROM messages ORDER BY key LIMIT ?)",
                (excess,),
            )
            self._depth -= excess
            expired += excess
        return expired

    def _report_failure(self, exc: sqlite3.Error) -> None:
        if not self._failing:
            self._failing = True
            log.error("mqtt_outbox_write_failed", path=str(self.path), error=str(exc),
                      depth=self._depth)


class PersistentSequencer(Sequencer):
    """A ``Sequencer`` whose numbers are saved in a ``SqliteOutbox``'s database.

    Made by ``SqliteOutbox.sequencer()``; starts after the last numbers saved.
    """

    def __init__(
        self, outbox: SqliteOutbox, state: dict[str, int], immediate: frozenset[str]
    ) -> None:
        super().__init__(state)
        self._outbox = outbox
        self._immediate = immediate

    def next(self, key: str) -> int:
        value = super().next(key)
        self._outbox._stage_sequence(key, value, key in self._immediate)
        return value
