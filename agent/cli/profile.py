"""``edge-agent model profile``'s arguments, kept apart from the profiler so the CLI starts fast.

The profiler (agent.tools.profile: the frame pipeline, OpenCV) is imported
only when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_BINS", "DEFAULT_FRAMES", "add_profile_parser"]

DEFAULT_FRAMES = 300
DEFAULT_BINS = 10
DEFAULT_THREADS = 2


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _run(args: argparse.Namespace) -> int:
    from agent.tools.profile import cmd_profile

    return cmd_profile(args)


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``profile`` to the subcommands of ``edge-agent model``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "profile", help="profile a model on sample frames and store its drift reference",
        description="Run a model on sample frames and store its reference statistics (for drift) "
                    "in its manifest.json.")
    parser.add_argument("model_dir", type=Path, help="the model's folder (manifest.json and model)")
    sample = parser.add_mutually_exclusive_group(required=True)
    sample.add_argument("--video", type=Path, help="a video file to take the frames from")
    sample.add_argument("--images", type=Path, help="a folder of images")
    parser.add_argument("--frames", type=_at_least(1), default=DEFAULT_FRAMES,
                        help=f"frames to profile, spread over the video (default {DEFAULT_FRAMES})")
    parser.add_argument("--bins", type=_at_least(2), default=DEFAULT_BINS,
                        help=f"histogram bins per statistic (default {DEFAULT_BINS})")
    parser.add_argument("--threads", type=_at_least(1), default=DEFAULT_THREADS,
                        help=f"inference threads (default {DEFAULT_THREADS})")
    parser.set_defaults(handler=_run)
    return parser
