"""``python -m agent.cli.bench_transforms --demo demo``: agent.dev.bench_transforms's comparison, a line a model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import agent.dev.bench_transforms as dev_bench_transforms
from agent.cli.say import EXIT_OK, fail, say
from agent.dev import DevError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, print one line per demo model; 1 when the demo video gives no frame."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.bench_transforms",
                                     description=(dev_bench_transforms.__doc__ or "").splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--repeats", type=int, default=dev_bench_transforms.DEFAULT_REPEATS)
    parser.add_argument("--threads", type=int, default=dev_bench_transforms.DEFAULT_THREADS)
    args = parser.parse_args(argv)
    try:
        for comparison in dev_bench_transforms.compare_demo(args.demo, args.repeats, args.threads):
            say(comparison.line())
    except DevError as exc:
        return fail("bench_transforms", exc)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
