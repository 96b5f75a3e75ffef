"""Lines printed as they come (benches, soak, demo, rollouts), and the exit codes of the dev commands."""

from __future__ import annotations

import sys

__all__ = ["EXIT_FAILURE", "EXIT_OK", "fail", "say"]

EXIT_OK = 0
EXIT_FAILURE = 1


def say(text: str) -> None:
    """Print one line at once (a bench or soak runs for minutes; its lines must not wait in a buffer)."""
    print(text, flush=True)


def fail(command: str, exc: Exception) -> int:
    """Print why ``command`` stopped to stderr and return the failure exit code."""
    print(f"{command}: {exc}", file=sys.stderr, flush=True)
    return EXIT_FAILURE
