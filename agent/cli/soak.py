"""``python -m agent.cli.soak`` (``make soak``): agent.dev.soak's run, its tally printed; exit 1 when it failed."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import agent.dev.soak as dev_soak
from agent.cli.say import EXIT_FAILURE, EXIT_OK, say

__all__ = ["main"]

TALLY_WIDTH = 28
"""Right-aligns the tally's names: the longest, telemetry_waiting_in_outbox, fits."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, soak, print the tally (aligned, then as one JSON line)."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.soak",
                                     description=(dev_soak.__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the agent runs")
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="the demo assets (make setup)")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp folder)")
    args = parser.parse_args(argv)
    if not (args.demo / "video.mp4").is_file():
        parser.error(f"{args.demo}/video.mp4 is missing: run make setup")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edge-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"soak: {args.minutes} min, files in {work}")
    tally = dev_soak.Soak(args.minutes, args.demo.resolve(), work).run()
    for key, value in tally.items():
        print(f"{key:>{TALLY_WIDTH}}: {value}")
    print(json.dumps(tally, sort_keys=True))
    return EXIT_OK if dev_soak.soak_passed(tally) else EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
