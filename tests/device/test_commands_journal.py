"""The command journal: ids scoped by command name, repeats answered across restarts without
redoing the work, a corrupt journal kept aside instead of stopping start-up, and an
append-only log that stays bounded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.device.commands import COMPACT_FACTOR, CommandJournal, CommandRouter, Outcome
from agent.wire import CommandError
from agent.wire.topics import Topics

TOPICS = Topics("edge", "dev1")


class Device:
    """Handlers that count what they did, and the replies the router sent."""

    def __init__(self, path: Path, size: int = 100) -> None:
        self.journal = CommandJournal(path, size)
        self.done: list[tuple[str, str]] = []
        self.replies: list[tuple[str | None, Outcome]] = []
        self.router = CommandRouter(TOPICS, self.journal,
                                    {"ping": self._handler("ping"), "rollback": self._handler("rollback")},
                                    self._reply, self._rejected)

    def _handler(self, name: str) -> Any:
        async def handle(command: Any) -> dict[str, Any]:
            self.done.append((name, command.id))
            return {"did": name}
        return handle

    async def _reply(self, command_id: str | None, outcome: Outcome) -> None:
        self.replies.append((command_id, outcome))

    async def _rejected(self, name: str, error: CommandError) -> None:
        raise AssertionError(f"{name} rejected: {error}")

    def send(self, *commands: tuple[str, dict[str, Any]]) -> list[tuple[str | None, str, bool]]:
        async def scenario() -> None:
            for name, document in commands:
                await self.router.on_message(TOPICS.command(name), json.dumps(document).encode())
                await self.router.wait_idle()
        before = len(self.replies)
        asyncio.run(scenario())
        return [(i, o.command, o.ok) for i, o in self.replies[before:]]


def test_a_rollback_reusing_a_pings_id_is_done_as_a_rollback(tmp_path: Path):
    device = Device(tmp_path / "commands.json")
    answers = device.send(("ping", {"id": "same"}), ("rollback", {"id": "same"}))
    assert answers == [("same", "ping", True), ("same", "rollback", True)]
    assert device.done == [("ping", "same"), ("rollback", "same")]


def test_a_repeated_id_is_answered_again_after_a_restart_without_redoing_the_work(tmp_path: Path):
    path = tmp_path / "commands.json"
    first = Device(path)
    first.send(("ping", {"id": "p-1"}), ("rollback", {"id": "r-1"}))
    again = Device(path)
    answers = again.send(("ping", {"id": "p-1"}), ("rollback", {"id": "r-1"}))
    assert answers == [("p-1", "ping", True), ("r-1", "rollback", True)]
    assert again.done == []
    assert again.replies[1][1].result == {"did": "rollback"}


def test_a_command_running_when_the_agent_stopped_is_answered_as_interrupted(tmp_path: Path):
    path = tmp_path / "commands.json"
    CommandJournal(path, 100).started("rollback", "r-1")
    device = Device(path)
    answers = device.send(("rollback", {"id": "r-1"}))
    assert answers == [("r-1", "rollback", False)]
    error = device.replies[0][1].error
    assert error is not None and error["code"] == "interrupted" and device.done == []


@pytest.mark.parametrize("content", [
    b'["ping", "p-1"]',
    b'[1, 2, 3]\n',
    b'{"name": "ping", "id": "p-1", "outcome": "yes"}\n',
    b'{"p-1": 17}',
    b'\x00\xff garbage\n{"name": "ping", "id": "p-2", "outcome": null}\n',
], ids=["list", "list-line", "wrong-outcome", "legacy-wrong-value", "garbage"])
def test_a_journal_of_the_wrong_shape_is_kept_aside_and_the_agent_starts_empty(
    tmp_path: Path, content: bytes
):
    path = tmp_path / "commands.json"
    path.write_bytes(content)
    device = Device(path)
    assert (tmp_path / "commands.json.corrupt").read_bytes() == content
    assert device.send(("ping", {"id": "p-1"})) == [("p-1", "ping", True)]
    assert device.done == [("ping", "p-1")]
    assert Device(path).journal.get("ping", "p-1") is not None


def test_a_torn_last_line_is_ignored_and_the_rest_kept(tmp_path: Path):
    path = tmp_path / "commands.json"
    Device(path).send(("ping", {"id": "p-1"}))
    with path.open("ab") as handle:
        handle.write(b'{"name": "ping", "id": "p-2", "outc')
    device = Device(path)
    assert not (tmp_path / "commands.json.corrupt").exists()
    assert device.send(("ping", {"id": "p-1"}), ("ping", {"id": "p-2"})) == [
        ("p-1", "ping", True), ("p-2", "ping", True)]
    assert device.done == [("ping", "p-2")]
    assert Device(path).journal.get("ping", "p-2") is not None


def test_a_journal_of_the_older_format_is_read_by_the_command_each_outcome_names(tmp_path: Path):
    path = tmp_path / "commands.json"
    done = Outcome("rollback", True, None, {"did": "rollback"}).to_json()
    path.write_text(json.dumps({"r-1": done, "d-1": "started"}), encoding="utf-8")
    device = Device(path)
    assert device.send(("rollback", {"id": "r-1"})) == [("r-1", "rollback", True)]
    assert device.done == []
    assert all(set(json.loads(line)) == {"name", "id", "outcome"}
               for line in path.read_text(encoding="utf-8").splitlines())


def test_the_log_grows_by_a_line_per_change_and_is_compacted_to_the_newest_entries(tmp_path: Path):
    path = tmp_path / "commands.json"
    size = 10
    device = Device(path, size)
    device.send(("ping", {"id": "p-0"}))
    assert len(path.read_bytes().splitlines()) == 2  # started, then finished
    device.send(*(("ping", {"id": f"p-{n}"}) for n in range(1, 10 * size)))
    lines = len(path.read_bytes().splitlines())
    assert size <= lines < COMPACT_FACTOR * size
    kept = Device(path, size).journal
    assert kept.get("ping", f"p-{10 * size - 1}") is not None
    assert kept.get("ping", f"p-{9 * size - 1}") is None  # forgotten, as the size says
