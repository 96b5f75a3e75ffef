"""Progress of long work for a person: rich bars on a terminal, one plain line per change when piped.

``with ProgressBoard() as board: board.update(key, text, fraction)`` draws one bar
per key (a device, a file) while stderr is a terminal; piped or redirected, it
writes ``text fraction%`` as a line whenever the text or the whole percent
changes, which logs and tests read. ``fraction`` None: the work has no measure
yet (a spinner, or no percent in the line).

``board.reporter()`` is the :class:`agent.core.progress.Progress` callback the
tools and the fleet rollout take: one bar per stage on a terminal; piped, a line
per tenth of a stage (``calibrate 16/32  50.0%``), or per step when the total is
not known.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from agent.core import Progress as ProgressCallback

__all__ = ["ProgressBoard", "is_terminal"]

REFRESH_PER_S = 8.0
"""Redraws a second: smooth enough for a person, cheap on a slow serial console."""
PLAIN_STEP_PERCENT = 10
"""Piped, a stage with a known total writes a line each 10%: a 200-step run writes 11 lines, not 200."""


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


class ProgressBoard:
    """Bars for named pieces of work on a terminal (``live``), plain lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.live = is_terminal(self.stream) if live is None else live
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last: dict[str, tuple[str, int | None]] = {}

    def __enter__(self) -> ProgressBoard:
        if self.live:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), console=Console(file=self.stream), refresh_per_second=REFRESH_PER_S)
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def reporter(self, prefix: str = "") -> ProgressCallback:
        """A ``Progress`` callback drawing one bar per stage (named ``prefix + stage``) on this board."""
        shown: dict[str, int] = {}

        def progress(stage: str, done: int, total: int, *, note: str = "") -> None:
            key = f"{prefix}{stage}"
            counted = f"{key} {done}/{total}" if total else f"{key} {done}"
            fraction = min(1.0, done / total) if total else None
            if fraction is not None and not self.live:
                tenth = int(fraction * 100) // PLAIN_STEP_PERCENT
                if shown.get(key) == tenth:
                    return
                shown[key] = tenth
            self.update(key, f"{counted} {note}" if note else counted, fraction)

        return progress

    def update(self, key: str, text: str, fraction: float | None) -> None:
        """Show ``text`` and ``fraction`` (0..1, or None) for ``key``."""
        if self._progress is not None:
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = self._progress.add_task(text, total=None if fraction is None else 1.0)
            self._progress.update(task, description=text, completed=fraction or 0.0,
                                  total=None if fraction is None else 1.0)
            return
        percent = None if fraction is None else int(fraction * 100)
        if self._last.get(key) == (text, percent):
            return
        self._last[key] = (text, percent)
        shown = "" if fraction is None else f" {fraction * 100:5.1f}%"
        print(f"{text}{shown}", file=self.stream, flush=True)
