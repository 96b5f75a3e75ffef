"""Logging as the journal and a terminal see it: each case runs in a fresh interpreter
whose stderr is a real pipe or a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.core.log import LoggingError, configure_logging

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60
ANSI = re.compile(r"\x1b\[[0-9;]*m")

PRELUDE = """
import asyncio, logging, threading
import structlog
from agent.core.log import bind_context, configure_logging
log = structlog.get_logger("agent.device.daemon")
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_with_pipe(body: str, **env: str) -> list[str]:
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    return done.stderr.splitlines()


def as_json(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines]


def test_a_pipe_gets_one_json_object_per_line_with_device_and_model() -> None:
    lines = run_with_pipe(
        """
        configure_logging("info")
        bind_context(device_id="cam-7", model_version="4.0.0")
        log.info("frame_processed", fps=14.5, model="text-det")
        log.debug("frame_preprocessed")
        logging.getLogger("paho.mqtt.client").info("Sending PINGREQ")
        logging.getLogger("aiomqtt").warning("broker %s went away", "edge-broker")
        """
    )
    events = as_json(lines)
    assert [e["event"] for e in events] == ["frame_processed", "broker edge-broker went away"]
    for event in events:
        assert event["device_id"] == "cam-7"
        assert event["model_version"] == "4.0.0"
        stamp = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - stamp) < timedelta(hours=1)
    assert [e["level"] for e in events] == ["info", "warning"]
    assert events[0]["fps"] == 14.5
    assert events[1]["logger"] == "aiomqtt"
    assert list(events[0])[:3] == ["timestamp", "level", "event"]


def test_debug_level_shows_agent_debug_but_keeps_foreign_loggers_at_warning() -> None:
    events = as_json(
        run_with_pipe(
            """
            configure_logging("debug")
            log.debug("frame_preprocessed")
            logging.getLogger("paho.mqtt.client").debug("Received PINGRESP")
            logging.getLogger("paho.mqtt.client").info("Connected")
            logging.getLogger("paho.mqtt.client").error("Connection refused")
            """
        )
    )
    assert [e["event"] for e in events] == ["frame_preprocessed", "Connection refused"]


def test_a_model_swap_reaches_threads_and_tasks_that_started_before_it() -> None:
    events = as_json(
        run_with_pipe(
            """
            configure_logging("info")
            bind_context(device_id="cam-7", model_version="1.0.0")
            swapped = threading.Event()

            def frame_worker():
                swapped.wait()
                log.info("frame_processed")

            async def main():
                started = asyncio.Event()
                go = asyncio.Event()

                async def telemetry():
                    started.set()
                    await go.wait()
                    log.info("telemetry_published")

                task = asyncio.create_task(telemetry())
                worker = threading.Thread(target=frame_worker)
                worker.start()
                await started.wait()
                bind_context(model_version="2.0.0")
                log.info("engine_swapped", from_version="1.0.0", to_version="2.0.0")
                swapped.set()
                go.set()
                await task
                await asyncio.to_thread(worker.join)

            asyncio.run(main())
            """
        )
    )
    assert sorted(e["event"] for e in events) == [
        "engine_swapped",
        "frame_processed",
        "telemetry_published",
    ]
    assert {e["model_version"] for e in events} == {"2.0.0"}
    assert {e["device_id"] for e in events} == {"cam-7"}


def test_task_scoped_context_and_event_keys_sit_on_top_of_the_process_context() -> None:
    events = as_json(
        run_with_pipe(
            """
            configure_logging("info")
            bind_context(device_id="cam-7", model_version="1.0.0")
            with structlog.contextvars.bound_contextvars(deployment_id="d-42"):
                log.info("deployment_verifying", model_version="2.0.0")
            log.info("deployment_done")
            bind_context(model_version=None)
            log.info("model_unloaded")
            """
        )
    )
    verifying, done, unloaded = events
    assert (verifying["deployment_id"], verifying["model_version"]) == ("d-42", "2.0.0")
    assert "deployment_id" not in done and done["model_version"] == "1.0.0"
    assert "model_version" not in unloaded and unloaded["device_id"] == "cam-7"


def test_an_exception_stays_on_one_json_line_with_its_traceback() -> None:
    lines = run_with_pipe(
        """
        configure_logging("info")
        try:
            raise RuntimeError("engine fell over")
        except RuntimeError:
            log.exception("frame_failed", frame=12)
        """
    )
    (event,) = as_json(lines)
    assert event["event"] == "frame_failed"
    assert event["level"] == "error"
    assert "RuntimeError: engine fell over" in str(event["exception"])


def test_the_journal_stream_gets_syslog_priority_prefixes() -> None:
    read_end, write_end = os.pipe()
    stat = os.fstat(write_end)
    script = PRELUDE + textwrap.dedent(
        """
        configure_logging("info")
        log.info("agent_started")
        log.warning("camera_lost")
        log.error("engine_load_failed")
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=child_env(JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}"),
        stderr=write_end,
    )
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as reader:
        lines = reader.read().splitlines()
    assert child.wait(timeout=CHILD_TIMEOUT_S) == 0
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<6>", "<4>", "<3>"]
    assert [json.loads(line[3:])["event"] for line in lines] == [
        "agent_started",
        "camera_lost",
        "engine_load_failed",
    ]


def test_a_journal_stream_naming_another_file_adds_no_prefix() -> None:
    lines = run_with_pipe(
        """
        configure_logging("info")
        log.info("agent_started")
        """,
        JOURNAL_STREAM="1:1",
    )
    assert as_json(lines)[0]["event"] == "agent_started"


def test_a_terminal_gets_readable_console_lines() -> None:
    controller, terminal = pty.openpty()
    script = PRELUDE + textwrap.dedent(
        """
        configure_logging("info")
        bind_context(device_id="cam-7", model_version="4.0.0")
        log.info("frame_processed", fps=14.5)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=child_env(), stderr=terminal
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert child.wait(timeout=CHILD_TIMEOUT_S) == 0
    text = output.decode()
    assert "\x1b[" in text  # colours on a terminal
    (line,) = ANSI.sub("", text).strip().splitlines()
    assert not line.startswith("{")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[info\s*\] frame_processed", line)
    for pair in ("device_id=cam-7", "model_version=4.0.0", "fps=14.5"):
        assert pair in line


def test_json_can_be_forced_off_on_a_pipe() -> None:
    (line,) = run_with_pipe(
        """
        configure_logging("warning", json=False)
        log.info("frame_processed")
        log.warning("camera_lost", source="camera0")
        """
    )
    assert not line.startswith("{")
    assert "camera_lost" in line and "source=camera0" in line


def test_an_unknown_level_is_rejected_naming_it() -> None:
    with pytest.raises(LoggingError, match=r"'verbose'.*debug, info, warning, error"):
        configure_logging("verbose")
