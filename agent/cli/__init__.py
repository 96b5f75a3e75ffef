"""The command line: the only place that parses arguments, prints, and defines exit codes.

``main`` loads the ``edge-agent`` parser only when called, so that running one of this
package's modules (``python -m agent.cli.bench``) does not import it first.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edge-agent`` with ``argv`` (default: this process's arguments); return its exit code."""
    from agent.cli.main import main as edge_agent

    return edge_agent(argv)


def run() -> None:
    """Run ``edge-agent`` on this process's arguments and exit with its status (``python -m agent``)."""
    raise SystemExit(main())
