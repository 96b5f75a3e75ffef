"""README.md's ten-minute tour, run as written: its commands, in order, against the real agent.

The tour's fenced blocks are marked ``sh tour`` with options after the marker:

- ``terminal=NAME wait=TEXT``: a long-running command in a terminal of its own
  (a tmux window), the tour going on once its screen shows TEXT;
- ``expect=TEXT``: a command that ends; what it prints (stdout and stderr) holds
  TEXT (repeatable); ``exit=N``: its exit status (default 0);
- ``screen=NAME:REGEX``: afterwards, terminal NAME shows a line matching REGEX
  (repeatable).

The commands run in a sandbox laid out like a fresh clone after ``make setup``:
the repository's Makefile, config.toml and code, this checkout's .venv, its own
copy of the demo models and its own state and engine folders. Only the fixed
ports the README names are swapped for free ones (the live view's in the
config, the tour's broker and dashboard in the commands), so the test can run
beside others.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agentproc import BEHAVIOUR_UNJUDGED, REPO
from tests.support.mosquitto import WAIT_S, free_port, poll
from tests.support.tmux import SCREEN_POLL_S, Tmux

README = REPO / "README.md"
TOUR_HEADING = "## A ten-minute tour"
FENCE = re.compile(r"^```sh tour(?P<options>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
OPTIONS = frozenset({"terminal", "wait", "expect", "exit", "screen"})
PORTS = {"8090": "live", "8080": "dashboard", "1884": "broker"}
"""The fixed ports the tour names (the live view's default, the dashboard's, the tour's broker)."""
PORT_IN_TEXT = re.compile(r"(?<=[: ])(" + "|".join(PORTS) + r")\b")
START_S = 240.0
"""``make run`` first runs ``make setup`` (every demo asset already there: it checks them and installs v4)."""
COMMAND_S = 300.0
"""A deploy downloads, verifies, loads, warms and validates PP-OCRv6 on two shared cores."""
STOP_S = 30.0
SLOW_MACHINE = "latency_budget_ms = 60000.0\nmax_latency_ratio = 100.0\n" + "\n".join(
    f"{key} = {value!r}" for key, value in BEHAVIOUR_UNJUDGED.items())
"""The deploy bounds of a loaded test machine: a warm-up or probation judged on speed would fail by chance,
and so would one judged on behaviour (a loaded CI run rolled v6 back by itself before the tour's rollback,
which then answered "now serving v6": slowed frames put the old model's baseline and the new model's first
frames in different scenes of the demo video)."""


@dataclass(frozen=True)
class Step:
    """One fenced block of the tour and what it must show."""

    body: str
    terminal: str | None = None
    wait: str | None = None
    expect: tuple[str, ...] = ()
    exit: int = 0
    screens: tuple[tuple[str, str], ...] = ()


def tour_steps(readme: str) -> list[Step]:
    """The tour's blocks, in order, with their options (an unknown option is an error: a typo checks nothing)."""
    assert TOUR_HEADING in readme, f"README.md has no section {TOUR_HEADING!r}"
    section = readme.split(TOUR_HEADING, 1)[1].split("\n## ", 1)[0]
    steps = []
    for block in FENCE.finditer(section):
        options: dict[str, list[str]] = {}
        for word in shlex.split(block["options"]):
            key, _, value = word.partition("=")
            assert key in OPTIONS and value, f"tour option {word!r}: use {', '.join(sorted(OPTIONS))} as KEY=VALUE"
            options.setdefault(key, []).append(value)
        screens = tuple(tuple(screen.split(":", 1)) for screen in options.get("screen", ()))
        assert all(len(screen) == 2 for screen in screens), f"screen=NAME:REGEX, not {options['screen']}"
        terminal = options.get("terminal", [None])[0]
        assert (terminal is None) == ("wait" not in options), "a terminal's block says what to wait for, only it"
        steps.append(Step(block["body"], terminal, options.get("wait", [None])[0], tuple(options.get("expect", ())),
                          int(options.get("exit", ["0"])[0]), screens))  # type: ignore[arg-type]
    return steps


def test_the_tour_runs_make_run_top_a_fleet_a_deploy_a_rollback_and_a_refusal_in_that_order():
    steps = tour_steps(README.read_text(encoding="utf-8"))
    commands = [step.body.strip() for step in steps]
    order = ["make run", "edge-agent top --config config.toml", "snapshot.jpg", "fleet simulate",
             "fleet dashboard", "make demo-deploy", "make demo-rollback", "corrupt.onnx"]
    found = [next((i for i, command in enumerate(commands) if text in command), None) for text in order]
    assert None not in found and found == sorted(found), list(zip(order, found, strict=True))
    assert all(step.expect or step.terminal for step in steps), "every step checks what it shows"
    assert {step.terminal for step in steps if step.terminal} >= {"agent", "top"}
    assert {port for step in steps for port in PORT_IN_TEXT.findall(step.body)} == set(PORTS)


def _sandbox(tmp_path: Path, demo_dir: Path, ports: dict[str, int]) -> Path:
    """A folder laid out like the clone the README speaks to, after ``make setup``."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("Makefile", "agent"):
        (clone / name).symlink_to(REPO / name)
    venv = (REPO / ".venv").resolve()
    (clone / ".venv").symlink_to(venv)
    # make rebuilds .venv when pyproject.toml is newer than its stamp: this copy is older, so it never does.
    shutil.copy(REPO / "pyproject.toml", clone / "pyproject.toml")
    stamp = (venv / ".installed").stat().st_mtime
    os.utime(clone / "pyproject.toml", (stamp - 60, stamp - 60))
    demo = clone / "demo"
    demo.mkdir()
    for name in ("wheels", "images", "video.mp4"):
        (demo / name).symlink_to(demo_dir / name)
    # Copies, not links: file:// deploys read only inside [deploy] file_roots, with symlinks resolved first.
    shutil.copytree(demo_dir / "models", demo / "models", ignore=shutil.ignore_patterns("corrupt.onnx"))
    config = (REPO / "config.toml").read_text(encoding="utf-8")
    assert "[live_view]" not in config and config.count("\n[deploy]\n") == 1, "the layout the tour's config takes"
    # Two shared cores serve v4 while v6 warms (other tests beside it): bounds as loose as the other e2e tests'.
    config = config.replace("\n[deploy]\n", f"\n[deploy]\n{SLOW_MACHINE}\n")
    config += f'\n[live_view]\nlisten = "127.0.0.1:{ports["live"]}"\n'
    (clone / "config.toml").write_text(config, encoding="utf-8")
    return clone


def _with_free_ports(text: str, ports: dict[str, int]) -> str:
    return PORT_IN_TEXT.sub(lambda found: str(ports[PORTS[found[1]]]), text)


def _wait_for_screen(terminal: Tmux, name: str, pattern: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        screen = terminal.screen(name)
        if re.search(pattern, screen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"terminal {name} never showed /{pattern}/:\n{screen}")
        time.sleep(SCREEN_POLL_S)


def test_the_readme_tour_works_as_written(tmp_path: Path, demo_dir: Path):
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.fail("the tour needs make and curl")
    ports = {name: free_port() for name in PORTS.values()}
    clone = _sandbox(tmp_path, demo_dir, ports)
    environ = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES", "MAKEFLAGS")}
    environ["PYTHONPATH"] = str(REPO)  # .venv/bin/edge-agent runs this checkout's code
    terminal = Tmux(width=200, height=60)
    windows: list[tuple[str, Path]] = []
    try:
        for number, step in enumerate(tour_steps(README.read_text(encoding="utf-8"))):
            body = _with_free_ports(step.body, ports)
            if step.terminal is not None:
                rc = tmp_path / f"{step.terminal}.rc"
                terminal.run(step.terminal, ["bash", "-c", body], clone, rc, env={"PYTHONPATH": str(REPO)})
                windows.append((step.terminal, rc))
                assert step.wait is not None
                terminal.wait_for(step.terminal, step.wait, history=True, timeout=START_S)
                continue
            done = subprocess.run(["bash", "-e", "-c", body], cwd=clone, env=environ, capture_output=True,
                                  text=True, timeout=COMMAND_S)
            printed = done.stdout + done.stderr
            assert done.returncode == step.exit, f"step {number} ({body.strip()}) ended {done.returncode}:\n{printed}"
            for text in step.expect:
                assert text in printed, f"step {number} ({body.strip()}) did not print {text!r}:\n{printed}"
            for name, pattern in step.screens:
                _wait_for_screen(terminal, name, pattern)
    finally:
        for name, rc in reversed(windows):
            terminal.keys(name, "C-c")
            with contextlib.suppress(AssertionError):  # what does not stop is killed with the tmux server
                poll(rc.exists, STOP_S, f"the tour's {name} to stop on Ctrl-C")
        terminal.close()
