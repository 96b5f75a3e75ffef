"""A real terminal for the tests: tmux on a private socket, commands in windows, screens read back."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.mosquitto import WAIT_S

TMUX = shutil.which("tmux")
TERMINAL_SIZE_VARIABLES = ("COLUMNS", "LINES")
SCREEN_POLL_S = 0.3
"""Each look at a screen is a tmux process: a few a second are enough for a person-paced view."""
_sockets = itertools.count()


class Tmux:
    """``tmux -L <private socket>``: windows of a given size, each running one command."""

    def __init__(self, width: int = 160, height: int = 50) -> None:
        if TMUX is None:
            raise AssertionError("tmux is missing: install tmux to run the terminal tests")
        self.socket = f"edge-agent-test-{os.getpid()}-{next(_sockets)}"
        self.width, self.height = width, height
        self._started = False

    def _tmux(self, *args: str) -> str:
        assert TMUX is not None
        # The server passes its environment to the windows: a COLUMNS set around the tests would hold every
        # program there to that width whatever the window's size.
        environ = {key: value for key, value in os.environ.items() if key not in TERMINAL_SIZE_VARIABLES}
        done = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=WAIT_S,
                              env=environ)
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def run(self, name: str, argv: Sequence[str], cwd: Path, rc_file: Path,
            env: dict[str, str] | None = None) -> None:
        """Start ``argv`` in window ``name``; its exit status is written to ``rc_file``."""
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in (env or {}).items())
        command = (f"cd {shlex.quote(str(cwd))} && {'env ' + exports + ' ' if exports else ''}"
                   f"{shlex.join(argv)}; echo $? > {shlex.quote(str(rc_file))}; sleep 600")
        if self._started:
            self._tmux("new-window", "-d", "-n", name, command)
        else:
            self._tmux("new-session", "-d", "-s", "test", "-n", name, "-x", str(self.width), "-y",
                       str(self.height), command)
            self._started = True

    def screen(self, name: str, history: bool = False) -> str:
        """What window ``name`` shows now (``history``: with everything scrolled off above)."""
        return self._tmux("capture-pane", "-p", "-J", "-t", f"test:{name}", *(("-S", "-") if history else ()))

    def wait_for(self, name: str, *texts: str, history: bool = False, timeout: float = WAIT_S) -> str:
        """The screen of ``name`` once it shows every one of ``texts``."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name, history)
            if all(text in screen for text in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {texts} on the screen of "
                                     f"{name}:\n{screen}")
            time.sleep(SCREEN_POLL_S)

    def keys(self, name: str, *keys: str) -> None:
        self._tmux("send-keys", "-t", f"test:{name}", *keys)

    def close(self) -> None:
        if self._started:
            subprocess.run([TMUX or "tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=WAIT_S)
            self._started = False
