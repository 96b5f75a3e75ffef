"""The outbox on disk: non-retained messages in a SQLite database until the broker has them.

``SqliteOutbox`` keeps the messages in a SQLite database (WAL mode) under
the state directory, so they survive a restart, a kill and a power loss, and
keeps the per-topic sequence numbers beside them (``PersistentSequencer``): a
message and the number it carries are saved in one transaction, so after a
restart the numbers continue where they stopped and a consumer can prove that
nothing was lost, or see how much the drop counter says was. A database that
cannot be opened or written for any reason but damage (a full disk, a file-size
limit, no permission, a read-only filesystem) is never set aside: messages wait in
memory meanwhile, bounded and counted, until the database takes writes again.
The ``Outbox`` protocol it keeps, and the in-memory one, are :mod:`agent.mqtt.outbox`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path

import structlog

from agent.mqtt.errors import MqttError
from agent.mqtt.outbox import DEFAULT_OUTBOX_CAPACITY, DEFAULT_OUTBOX_MAX_AGE_S, OutboxItem
from agent.wire import OutboxState, Sequencer

__all__ = [
    "OutboxError",
    "PersistentSequencer",
    "SqliteOutbox",
    "is_corruption",
]

log = structlog.get_logger(__name__)

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
CORRUPT_CODES = frozenset({11, 26})
"""SQLITE_CORRUPT and SQLITE_NOTADB (primary codes): the only errors that mean damage."""
CORRUPT_MESSAGES = ("file is not a database", "malformed")
"""Their messages, for Python 3.10 (JetPack 6), whose sqlite3 errors carry no code."""
REOPEN_INTERVAL_S = 5.0
"""While the database cannot be opened, how often a put tries again (an open reads the file)."""
MAX_MEMORY_BYTES = 32 * 1024 * 1024
"""Payload bytes kept in memory while the database takes no writes, beside ``max_messages``:
snapshots are large, and a device with a full disk must not run out of memory as well."""


def is_corruption(exc: sqlite3.Error) -> bool:
    """True when ``exc`` says the file is damaged or no database, not that it cannot be written."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return any(message in text for message in CORRUPT_MESSAGES)


class OutboxError(MqttError, RuntimeError):
    """The outbox database cannot be opened or created; the message names the file."""


class SqliteOutbox:
    """A bounded FIFO in a SQLite database: survives restarts, oldest dropped first.

    Bounded by ``max_messages`` and by age (``max_age_s``, by the time a message was
    put); what is dropped is counted, and the count is saved with the queue.
    Messages keep their payload byte for byte, so their timestamps and sequence
    numbers are the original ones when they are finally sent. ``durable`` makes
    every change reach the disk before it returns (``synchronous=FULL``), so a
    power loss keeps what was put; without it a process crash still keeps it.

    A write that fails (disk full, I/O error) does not raise, because telemetry must
    never stop the agent: the message waits in memory (at most ``max_messages`` and
    MAX_MEMORY_BYTES, the oldest dropped and counted beyond), ``state`` says ``memory``,
    the failure is logged once, and the next write that succeeds puts what waited into
    the database first. A database that cannot be opened but is not damaged (a full disk, a
    file-size limit, no permission, read-only) is left as it is and opened again later;
    only a damaged one (``file is not a database``, ``malformed``) is moved aside and a
    new one started. What waits in memory when the process ends is counted as dropped.
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
        self._durable = durable
        self._spill: deque[tuple[float, OutboxItem]] = deque()
        """Messages the database did not take, with the time they were put, oldest first."""
        self._spill_bytes = 0
        self._next_key = 1
        self._acked = 0
        """Every key up to this was acknowledged; the database may not have deleted them yet."""
        self._deleted = 0
        self._retry_at = 0.0
        self._depth = 0
        self._dropped = 0
        self._db: sqlite3.Connection | None = None
        with self._lock:
            self._attach(self._open(durable))
            if self._db is not None:
                self._write(lambda db: None)
            else:  # keys of the unseen queue are unknown: start above any it can hold
                self._next_key = time.time_ns() // 1000
        log.info("mqtt_outbox_opened", path=str(self.path), depth=self._depth,
                 dropped=self._dropped, state=self.state)

    def _attach(self, db: sqlite3.Connection | None) -> None:
        """Use ``db``: its depth, drop count and next key; None keeps the outbox in memory."""
        if db is None:
            self._retry_at = time.monotonic() + REOPEN_INTERVAL_S
            return
        try:
            depth = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            dropped = db.execute("SELECT value FROM counters WHERE name = ?", (DROPPED,)).fetchone()
            last = db.execute("SELECT MAX(key) FROM messages").fetchone()[0]
            issued = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        except sqlite3.Error as exc:
            db.close()
            self._report_failure(exc)
            self._retry_at = time.monotonic() + REOPEN_INTERVAL_S
            return
        self._db = db
        self._depth = depth
        self._dropped = max(self._dropped, int(dropped[0]) if dropped else 0)
        first_free = max(int(last or 0), int(issued[0]) if issued else 0) + 1
        if self._spill and self._spill[0][1].key < first_free:
            # Only after a clock set back since the queue was written: what waited in memory is
            # newer than the queue, so it goes after it (an ack in flight for it is lost).
            log.warning("mqtt_outbox_renumbered", messages=len(self._spill), first_key=first_free)
            self._spill = deque((created, OutboxItem(first_free + n, i.topic, i.payload, i.qos))
                                for n, (created, i) in enumerate(self._spill))
            self._next_key = first_free + len(self._spill)
        self._next_key = max(self._next_key, first_free)

    # --- opening ----------------------------------------------------------------------------

    def _open(self, durable: bool) -> sqlite3.Connection | None:
        """The database, or None (logged) when it cannot be used now; a damaged one is set aside."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect(durable)
        except (OSError, sqlite3.Error) as exc:
            if not isinstance(exc, sqlite3.Error) or not is_corruption(exc):
                if not self._failing:
                    log.error("mqtt_outbox_unavailable", path=str(self.path), error=str(exc),
                              state=OutboxState.MEMORY)
                self._failing = True
                return None
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
            log.error(
                "mqtt_outbox_unreadable", path=str(self.path), error=str(exc), moved_to=str(aside)
            )
            try:
                for suffix in ("", "-wal", "-shm"):
                    source = Path(f"{self.path}{suffix}")
                    if source.exists():
                        source.replace(Path(f"{aside}{suffix}"))
                return self._connect(durable)
            except (OSError, sqlite3.Error) as again:
                log.error("mqtt_outbox_unavailable", path=str(self.path), error=str(again),
                          state=OutboxState.MEMORY)
                self._failing = True
                return None

    def _connect(self, durable: bool) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=SQLITE_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. read-only: not damage, so not set aside
                raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL was asked for")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {check})")
            for statement in SCHEMA:
                db.execute(statement)
        except sqlite3.Error:
            db.close()
            raise
        return db

    # --- the Outbox protocol ----------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        created = self._clock()

        with self._lock:
            key = self._next_key
            self._next_key += 1

            if self._db is None and time.monotonic() >= self._retry_at:
                self._attach(self._open(self._durable))
            self._spill.append((created, OutboxItem(key, topic, payload, qos)))
            self._spill_bytes += len(payload)
            if not self._write_spill():
                self._bound_spill()

    def _write_spill(self) -> bool:
        """Move what waits in memory into the database, with its keys (an ack of it still
        works); False when the database does not take it."""

        def insert(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO messages (key, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)",
                [(i.key, i.topic, i.payload, i.qos, created) for created, i in self._spill],
            )
            self._depth += len(self._spill)

        if not self._write(insert, with_pending=True):
            return False
        self._spill.clear()
        self._spill_bytes = 0
        return True

    def _bound_spill(self) -> None:
        cutoff = self._clock() - self.max_age_s
        while self._spill and (len(self._spill) > self.max_messages
                               or self._spill_bytes > MAX_MEMORY_BYTES or self._spill[0][0] < cutoff):
            self._pop_spill()
            self._unsaved_drops += 1

    def _pop_spill(self) -> None:
        self._spill_bytes -= len(self._spill.popleft()[1].payload)

    def peek_batch(self, limit: int) -> list[OutboxItem]:
        with self._lock:
            rows: list[tuple[int, str, bytes, int]] = []
            if self._db is not None and self._depth:
                self._write(lambda db: None)  # the bounds; a full disk can still be read
                try:
                    rows = self._db.execute(
                        "SELECT key, topic, payload, qos FROM messages WHERE key > ? ORDER BY key "
                        "LIMIT ?", (self._acked, limit),
                    ).fetchall()
                except sqlite3.Error as exc:
                    # Nothing from memory goes out before the older messages on disk.
                    self._report_failure(exc)
                    return []
            self._bound_spill()
            items = [OutboxItem(int(k), str(t), bytes(p), int(q)) for k, t, p, q in rows]
            items += [item for _, item in islice(self._spill, limit)]
        return sorted(items, key=lambda item: item.key)[:limit]

    def ack(self, key: int) -> None:
        with self._lock:
            while self._spill and self._spill[0][1].key <= key:
                self._pop_spill()
            # Remembered first: a database that cannot delete now (full disk) still never
            # hands these out again, and the next write that succeeds deletes them.
            self._acked = max(self._acked, key)
            self._write(lambda db: None)

    @property
    def depth(self) -> int:
        return self._depth + len(self._spill)

    @property
    def state(self) -> OutboxState:
        """``disk`` while every waiting message is in the database, else ``memory``."""
        return OutboxState.MEMORY if self._db is None or self._failing or self._spill else OutboxState.DISK

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
            try:
                rows = self._db.execute("SELECT key, last FROM sequences").fetchall() if self._db else []
            except sqlite3.Error as exc:
                self._report_failure(exc)
                rows = []
        return PersistentSequencer(self, {str(k): int(v) for k, v in rows}, frozenset(immediate))

    def close(self) -> None:
        with self._lock:
            if self._spill and not self._write_spill():
                log.warning("mqtt_outbox_memory_lost", messages=len(self._spill))
                self._unsaved_drops += len(self._spill)
                self._spill.clear()
                self._spill_bytes = 0
            if self._db is not None:
                self._write(lambda db: None, with_pending=True)
                self._db.close()
                self._db = None

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
        if self._db is None:
            return False
        depth, drops = self._depth, self._unsaved_drops
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._acked > self._deleted:
                    self._depth -= self._db.execute(
                        "DELETE FROM messages WHERE key <= ?", (self._acked,)).rowcount
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
                if self._db.in_transaction:  # SQLite rolls back by itself on a full disk
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
        self._deleted = self._acked
        if with_pending:
            self._pending.clear()
        if self._failing:
            self._failing = False
            log.info("mqtt_outbox_recovered", path=str(self.path), depth=self._depth,
                     in_memory=len(self._spill))
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
