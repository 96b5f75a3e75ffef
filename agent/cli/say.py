"""Lines printed as they come (benches, soak, demo, rollouts), the exit codes, and a run until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

__all__ = ["EXIT_FAILURE", "EXIT_OK", "fail", "run_until_signal", "say"]

EXIT_OK = 0
EXIT_FAILURE = 1


def say(text: str) -> None:
    """Print one line at once (a bench or soak runs for minutes; its lines must not wait in a buffer)."""
    print(text, flush=True)


def fail(command: str, exc: Exception) -> int:
    """Print why ``command`` stopped to stderr and return the failure exit code."""
    print(f"{command}: {exc}", file=sys.stderr, flush=True)
    return EXIT_FAILURE


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)``; SIGINT and SIGTERM set ``stop`` so it can end cleanly."""
    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())
