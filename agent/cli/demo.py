"""``python -m agent.cli.demo --dest demo --store engines`` (``make setup``): agent.dev.demo, steps printed."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import agent.dev.demo as dev_demo
from agent.cli.say import EXIT_OK, fail, say
from agent.dev import DevError

__all__ = ["main"]


def _step(message: str) -> None:
    say(f"[demo] {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and set the demo up; 1 with the reason when a step cannot be done."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.demo",
                                     description=(dev_demo.__doc__ or "").splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("demo"))
    parser.add_argument("--store", type=Path, default=None, help="engine store to install the serving model into")
    args = parser.parse_args(argv)
    try:
        dev_demo.setup(args.dest, args.store, _step)
    except DevError as exc:
        return fail("demo", exc)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
