"""A handler's coded error, from any layer, is answered with its code and message; anything else is an
internal error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.device.commands import CommandFailed, CommandJournal, CommandRouter, Outcome
from agent.vision.cameras import CameraError
from agent.wire import CommandError
from agent.wire.topics import Topics

TOPICS = Topics("edge", "dev1")


def _answer(tmp_path: Path, failure: Exception) -> Outcome:
    replies: list[Outcome] = []

    async def handle(command: Any) -> dict[str, Any]:
        raise failure

    async def reply(command_id: str | None, outcome: Outcome) -> None:
        replies.append(outcome)

    async def rejected(name: str, error: CommandError) -> None:
        raise AssertionError(f"{name} rejected: {error}")

    router = CommandRouter(TOPICS, CommandJournal(tmp_path / "commands.json", 10), {"ping": handle}, reply, rejected)

    async def scenario() -> None:
        await router.on_message(TOPICS.command("ping"), json.dumps({"id": "c1"}).encode())
        await asyncio.gather(*list(router._tasks))

    asyncio.run(scenario())
    [outcome] = replies
    return outcome


def test_a_cameras_error_is_answered_with_its_code_and_message(tmp_path: Path):
    outcome = _answer(tmp_path, CameraError("camera_not_found", "camera 'nope' does not exist"))
    assert not outcome.ok
    assert outcome.error == {"code": "camera_not_found", "message": "camera 'nope' does not exist"}
    assert outcome.result is None


def test_a_failed_command_carries_its_result_in_the_reply(tmp_path: Path):
    outcome = _answer(tmp_path, CommandFailed("load_failed", "loading: bad", {"step": "loading"}))
    assert outcome.error == {"code": "load_failed", "message": "loading: bad"}
    assert outcome.result == {"step": "loading"}


def test_an_uncoded_error_is_answered_as_internal(tmp_path: Path):
    outcome = _answer(tmp_path, KeyError("model"))
    assert outcome.error == {"code": "internal_error", "message": "KeyError: 'model'"}
