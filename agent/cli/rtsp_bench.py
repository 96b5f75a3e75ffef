"""``python -m agent.cli.rtsp_bench``: RTSP recovery runs of agent.dev.rtsp_bench, one JSON line each, then medians."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from agent.cli.say import EXIT_OK, say
from agent.dev import measure_rtsp_recovery, recovery_summary, rtsp_server_unavailable

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per run, then the median of each figure (or why the server cannot run here)."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.rtsp_bench",
                                     description="RTSP recovery time of a FrameSource with the agent's defaults")
    parser.add_argument("--video", type=Path, default=Path("demo/video.mp4"))
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the server stays away")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    missing = rtsp_server_unavailable()
    if missing is not None:
        say(json.dumps({"skipped": missing}))
        return EXIT_OK
    results = [measure_rtsp_recovery(args.video, outage_s=args.outage) for _ in range(args.runs)]
    for result in results:
        say(json.dumps(result.as_dict()))
    say(json.dumps(recovery_summary(results)))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
