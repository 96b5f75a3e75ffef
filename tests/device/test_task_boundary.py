"""Every task in the agent's TaskGroup runs behind a boundary: a failure is logged and counted
(the count is in health), never raised into the group, where it would abort the process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from agent.core.config import AgentConfig
from agent.device.daemon import Agent
from agent.wire import HealthPayload


def _agent(tmp_path: Path, demo_dir: Path) -> Agent:
    config = AgentConfig.model_validate({
        "agent": {"device_id": "dev1", "state_dir": str(tmp_path / "state")},
        "source": {"uri": str(demo_dir / "video.mp4")},
        "model": {"name": "text-det", "store": str(tmp_path / "engines"), "threads": 1},
    })
    return Agent(config)


def test_a_failing_task_is_logged_counted_and_shown_in_health_without_raising(tmp_path, demo_dir):
    agent = _agent(tmp_path, demo_dir)

    async def broken() -> None:
        raise ValueError("status line 'v5\\n'")

    async def fine() -> None:
        return None

    async def run() -> list[bool]:
        return [await agent.guarded("ready", broken), await agent.guarded("ready", broken),
                await agent.guarded("watchdog", fine)]

    with structlog.testing.capture_logs() as logs:
        outcomes = asyncio.run(run())
    assert outcomes == [False, False, True]
    assert agent.task_failures == {"ready": 2}
    failed = [entry for entry in logs if entry["event"] == "task_failed"]
    assert [(entry["task"], entry["failures"]) for entry in failed] == [("ready", 1), ("ready", 2)]
    health = agent.telemetry.health(**agent.health_fields())
    assert isinstance(health, HealthPayload) and health.task_failures == {"ready": 2}
    agent.outbox.close()


def test_a_notifier_given_a_version_with_a_newline_does_not_fail_the_watchdog_tick(tmp_path, demo_dir):
    agent = _agent(tmp_path, demo_dir)

    async def tick() -> None:
        agent.notifier.status("serving text-det v5\n at 1.0 fps")
        agent.notifier.ready("serving text-det v5\n")

    assert asyncio.run(agent.guarded("watchdog", tick)) is True
    assert agent.task_failures == {}
    agent.outbox.close()
