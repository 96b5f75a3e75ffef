"""The command line: the only place that parses arguments, prints, and defines exit codes."""

from __future__ import annotations

from agent.cli.main import main

__all__ = ["main", "run"]


def run() -> None:
    """Run ``edge-agent`` on this process's arguments and exit with its status (``python -m agent``)."""
    raise SystemExit(main())
