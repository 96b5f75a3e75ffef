"""Commands from the control plane: validated, routed, answered once per id.

Each command carries an ``id``, scoped by command name (a rollback may reuse a ping's id);
the reply on ``<prefix>/<id>/reply`` echoes it. The journal remembers the reply of every
command name and id (on disk, so across restarts): a repeated
id is answered again from the journal without doing the work twice, and a repeat
that arrives while the first is still running waits for the same outcome. A
command that was running when the agent died is answered as interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.core import CodedError
from agent.device.errors import DeviceError
from agent.mqtt import CommandAuthority
from agent.wire import CommandError, Topics, parse_command

__all__ = ["CommandFailed", "CommandJournal", "CommandRouter", "Outcome"]

log = structlog.get_logger(__name__)

MAX_LOGGED_NAME = 128
MAX_LOGGED_MESSAGE = 1024
"""A rejected command's name and error are cut to this in the log: the sender chose them."""


class CommandFailed(DeviceError, CodedError):
    """A handler could not do what the command asked; ``code`` and ``message`` go in the reply, ``result``
    (when given) in its result."""

    def __init__(self, code: str, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.result = result


@dataclass(frozen=True)
class Outcome:
    command: str
    ok: bool
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "ok": self.ok, "error": self.error, "result": self.result}


INTERRUPTED = {"code": "interrupted",
               "message": "the agent restarted while this command ran; check the deployment topic"}
COMPACT_FACTOR = 2
"""The log is rewritten once it holds this many times ``size`` lines: appends stay small, the
file stays bounded (a few times ``size`` outcomes), and a rewrite happens once per ``size``."""


class CommandJournal:
    """Outcomes by command name and id, the newest ``size`` kept, in an append-only log at ``path``.

    One JSON line per change (``{"name", "id", "outcome"}``, ``outcome`` null while the command
    runs), appended and fsynced; the log is compacted to the live entries every
    ``COMPACT_FACTOR * size`` lines. A torn last line (the agent died mid-append) is ignored; any
    other unreadable content is kept aside as ``<path>.corrupt`` and the journal starts empty.
    A journal of the older format (one JSON object by id) is read and rewritten as a log.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._entries: OrderedDict[tuple[str, str], dict[str, Any] | None] = OrderedDict()
        self._lines = 0
        rewrite = self._load()
        if rewrite:
            self._compact()

    def _load(self) -> bool:
        """Read the log; True when it must be rewritten (another format, a torn line)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("command_journal_unreadable", path=str(self.path), error=str(exc))
            return False
        lines = data.split(b"\n")
        torn = lines.pop() if lines else b""  # after the last newline: empty unless torn
        try:
            if torn.strip() and not lines:  # one object without a newline: the older format
                self._load_legacy(json.loads(torn))
                return True
            for line in lines:
                self._apply(json.loads(line))
        except (ValueError, TypeError, KeyError) as exc:
            self._set_aside(str(exc))
            return True
        self._lines = len(lines)
        for key, outcome in self._entries.items():
            if outcome is None:  # it was running when the agent stopped
                self._entries[key] = Outcome(key[0], False, dict(INTERRUPTED)).to_json()
        return bool(torn.strip()) or any(v is None for v in self._entries.values())

    def _apply(self, record: Any) -> None:
        if not isinstance(record, dict) or set(record) != {"name", "id", "outcome"}:
            raise ValueError(f"not a journal record: {str(record)[:MAX_LOGGED_NAME]}")
        name, command_id, outcome = record["name"], record["id"], record["outcome"]
        if not isinstance(name, str) or not isinstance(command_id, str):
            raise ValueError("a journal record's name and id must be strings")
        if outcome is not None:
            Outcome(**outcome)  # TypeError when it is not an outcome
        self._put((name, command_id), outcome)

    def _load_legacy(self, data: Any) -> None:
        """``{id: outcome or "started"}``, ids shared across commands: each is filed under the
        command its outcome names; an id that was still running has no name and is dropped."""
        if not isinstance(data, dict):
            raise ValueError(f"a journal holds records, not a {type(data).__name__}")
        for command_id, value in data.items():
            if isinstance(value, dict):
                Outcome(**value)
                self._put((str(value["command"]), str(command_id)), value)
            elif value != "started":
                raise ValueError(f"journal entry {str(command_id)[:MAX_LOGGED_NAME]!r} is not an outcome")

    def _set_aside(self, reason: str) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        self._entries.clear()
        try:
            shutil.copyfile(self.path, aside)
        except OSError as exc:
            log.error("command_journal_corrupt", path=str(self.path), error=reason,
                      kept_aside=None, copy_error=str(exc))
            return
        log.error("command_journal_corrupt", path=str(self.path), error=reason, kept_aside=str(aside))

    def _put(self, key: tuple[str, str], outcome: dict[str, Any] | None) -> None:
        self._entries[key] = outcome
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    @staticmethod
    def _line(key: tuple[str, str], outcome: dict[str, Any] | None) -> bytes:
        return json.dumps({"name": key[0], "id": key[1], "outcome": outcome}).encode() + b"\n"

    def _append(self, key: tuple[str, str], outcome: dict[str, Any] | None) -> None:
        """Record a change; a disk that refuses it leaves the journal in memory, never the command."""
        self._put(key, outcome)
        if self._lines + 1 >= COMPACT_FACTOR * self.size:
            self._compact()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(self._line(key, outcome))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # a partial line may be left: the next change rewrites the log
            log.warning("command_journal_not_saved", path=str(self.path), error=str(exc))
            self._lines = COMPACT_FACTOR * self.size
            return
        self._lines += 1

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as handle:
                handle.writelines(self._line(k, v) for k, v in self._entries.items())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # kept in memory; the next change tries the rewrite again
            log.warning("command_journal_not_saved", path=str(self.path), error=str(exc))
            self._lines = COMPACT_FACTOR * self.size
            return
        self._lines = len(self._entries)

    def get(self, name: str, command_id: str) -> Outcome | None:
        value = self._entries.get((name, command_id))
        return None if value is None else Outcome(**value)

    def started(self, name: str, command_id: str) -> None:
        self._append((name, command_id), None)

    def finish(self, name: str, command_id: str, outcome: Outcome) -> None:
        self._append((name, command_id), outcome.to_json())


Handler = Callable[[Any], Awaitable[dict[str, Any] | None]]
Reply = Callable[[str | None, Outcome], Awaitable[None]]
Rejected = Callable[[str, CommandError], Awaitable[None]]


class CommandRouter:
    """Parses, authorises (when ``authority`` is set), deduplicates, runs and answers commands."""

    def __init__(self, topics: Topics, journal: CommandJournal, handlers: dict[str, Handler],
                 reply: Reply, rejected: Rejected,
                 authority: CommandAuthority | None = None) -> None:
        self.topics = topics
        self.journal = journal
        self.handlers = handlers
        self.reply = reply
        self.rejected = rejected
        self.authority = authority
        self._running: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Called by the MQTT session for every message; never blocks on a command's work."""
        name = self.topics.command_name(topic)
        if name is None:
            return
        task = asyncio.create_task(self._handle_logged(topic, name, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_logged(self, topic: str, name: str, payload: bytes) -> None:
        """A command whose reply cannot even be built is logged, never left to asyncio."""
        try:
            await self._handle(topic, name, payload)
        except Exception:
            log.exception("command_handling_failed", command=name[:MAX_LOGGED_NAME])

    async def _handle(self, topic: str, name: str, payload: bytes) -> None:
        try:
            if self.authority is not None:  # before anything else reads the command
                self.authority.admit(topic, payload)
            command = parse_command(name, payload)
        except CommandError as exc:
            log.warning("command_rejected", command=name[:MAX_LOGGED_NAME], code=exc.code,
                        error=exc.message[:MAX_LOGGED_MESSAGE])
            # The reply carries the command's id when it could be read, else a null id.
            await self.reply(exc.command_id, Outcome(name, False, {"code": exc.code, "message": exc.message}))
            await self.rejected(name, exc)
            return
        command_id = command.id
        done = self.journal.get(name, command_id)
        if done is not None:
            log.info("command_repeated", command=name, id=command_id)
            await self.reply(command_id, done)
            return
        key = (name, command_id)
        running = self._running.get(key)
        if running is not None:
            await self.reply(command_id, await asyncio.shield(running))
            return
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        self.journal.started(name, command_id)
        try:
            outcome = await self._run(name, command)
        finally:
            self._running.pop(key, None)
        self.journal.finish(name, command_id, outcome)
        future.set_result(outcome)
        await self.reply(command_id, outcome)

    async def _run(self, name: str, command: Any) -> Outcome:
        handler = self.handlers.get(name)
        if handler is None:
            return Outcome(name, False, {"code": "unknown_command", "message": f"{name!r} is not handled here"})
        log.info("command_received", command=name, id=command.id)
        try:
            result = await handler(command)
        except CodedError as exc:  # ours, from any layer (a camera's, a deployment's): its code is the reply's
            result = exc.result if isinstance(exc, CommandFailed) else None
            return Outcome(name, False, {"code": exc.code, "message": exc.message}, result)
        except Exception as exc:  # a handler bug must still be answered
            log.exception("command_crashed", command=name, id=command.id)
            return Outcome(name, False, {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        return Outcome(name, True, None, result)

    async def wait_idle(self) -> None:
        """Wait until every command in flight has finished (and replied)."""
        await asyncio.gather(*self._tasks)

    async def drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
