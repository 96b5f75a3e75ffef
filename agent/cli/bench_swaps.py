"""``python -m agent.cli.bench_swaps`` (``make bench-swaps``): agent.dev.bench_swaps's run, its figures printed.

With ``--json`` the figures also go out as one JSON line (what the CI test reads). Exit 0
when it ran; 1 when it could not go on. Nothing here judges a timing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import agent.dev.bench_swaps as dev_swaps
from agent.cli.say import EXIT_OK, fail, say
from agent.dev import DevError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the swaps, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.bench_swaps",
                                     description=(dev_swaps.__doc__ or "").splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="the demo assets (make setup)")
    parser.add_argument("--swaps", type=int, default=dev_swaps.SWAPS, help="alternating swaps v4 <-> v6")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON line at the end")
    args = parser.parse_args(argv)
    if not (args.demo / "video.mp4").is_file():
        parser.error(f"{args.demo}/video.mp4 is missing: run make setup")
    try:
        figures = dev_swaps.run_swaps(args.demo.resolve(), args.swaps, say)
    except DevError as exc:
        return fail("bench-swaps", exc)
    if args.json:
        print(json.dumps({"rss": figures.rss, "fds": figures.fds, "threads": figures.threads,
                          "growth_mb": figures.growth_mb, "within_noise": figures.slope_within_noise,
                          "seconds": figures.seconds}))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
