"""Commands from the control plane: validated, routed, answered once per id.

Each command carries an ``id``; the reply on ``<prefix>/<id>/reply`` echoes it. The
journal remembers the reply of every id (on disk, so across restarts): a repeated
id is answered again from the journal without doing the work twice, and a repeat
that arrives while the first is still running waits for the same outcome. A
command that was running when the agent died is answered as interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .mqtt.authority import CommandAuthority
from .mqtt.schema import CommandError, parse_command
from .mqtt.topics import Topics

__all__ = ["CommandFailed", "CommandJournal", "CommandRouter", "Outcome"]

log = structlog.get_logger(__name__)

STARTED = "started"
MAX_LOGGED_NAME = 128
MAX_LOGGED_MESSAGE = 1024
"""A rejected command's name and error are cut to this in the log: the sender chose them."""


class CommandFailed(Exception):
    """A handler could not do what the command asked; ``code`` and ``message`` go in the reply."""

    def __init__(self, code: str, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.result = result


@dataclass(frozen=True)
class Outcome:
    command: str
    ok: bool
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "ok": self.ok, "error": self.error, "result": self.result}


class CommandJournal:
    """Outcomes by command id, the newest ``size`` kept, written atomically to ``path``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("command_journal_unreadable", path=str(self.path), error=str(exc))
            return
        for key, value in data.items():
            if value == STARTED:
                value = Outcome("unknown", False, {"code": "interrupted",
                                "message": "the agent restarted while this command ran; check the deployment topic"}).to_json()
            self._entries[key] = value

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._entries), encoding="utf-8")
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def get(self, command_id: str) -> Outcome | None:
        value = self._entries.get(command_id)
        if value is None or value == STARTED:
            return None
        return Outcome(**value)

    def started(self, command_id: str) -> None:
        self._entries[command_id] = STARTED
        self._trim()
        self._save()

    def finish(self, command_id: str, outcome: Outcome) -> None:
        self._entries[command_id] = outcome.to_json()
        self._entries.move_to_end(command_id)
        self._trim()
        self._save()

    def _trim(self) -> None:
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


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
        self._running: dict[str, asyncio.Future[Outcome]] = {}
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
        done = self.journal.get(command_id)
        if done is not None:
            log.info("command_repeated", command=name, id=command_id)
            await self.reply(command_id, done)
            return
        running = self._running.get(command_id)
        if running is not None:
            await self.reply(command_id, await asyncio.shield(running))
            return
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._running[command_id] = future
        self.journal.started(command_id)
        try:
            outcome = await self._run(name, command)
        finally:
            self._running.pop(command_id, None)
        self.journal.finish(command_id, outcome)
        future.set_result(outcome)
        await self.reply(command_id, outcome)

    async def _run(self, name: str, command: Any) -> Outcome:
        handler = self.handlers.get(name)
        if handler is None:
            return Outcome(name, False, {"code": "unknown_command", "message": f"{name!r} is not handled here"})
        log.info("command_received", command=name, id=command.id)
        try:
            result = await handler(command)
        except CommandFailed as exc:
            return Outcome(name, False, {"code": exc.code, "message": exc.message}, exc.result)
        except Exception as exc:  # a handler bug must still be answered
            log.exception("command_crashed", command=name, id=command.id)
            return Outcome(name, False, {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        return Outcome(name, True, None, result)

    async def drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
