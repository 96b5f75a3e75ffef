"""``edge-agent model profile``: its arguments, what it prints and its exit codes.

The profiler (agent.tools.profile: the frame pipeline, OpenCV) does the work;
its defaults are written there once and read here for the help text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli.progress import ProgressBoard
from agent.tools import DEFAULT_BINS, DEFAULT_FRAMES

__all__ = ["add_profile_parser", "cmd_profile"]

DEFAULT_THREADS = 2
EXIT_OK, EXIT_FAILURE = 0, 1


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile ``args.model_dir`` on a video or an image folder and write the reference into its manifest."""
    from agent.models import EngineOptions
    from agent.tools import ProfileError, image_frames, profile, video_frames, write_reference

    folder: Path = args.model_dir
    try:
        if args.video is not None:
            frames, source = video_frames(args.video, args.frames), args.video.name
        else:
            frames, source = image_frames(args.images, args.frames), args.images.name
        with ProgressBoard() as board:
            reference = profile(folder, frames, source=source, bins=args.bins,
                                options=EngineOptions(threads=args.threads), progress=board.reporter(),
                                expected=args.frames)
        path = write_reference(folder, reference)
    except ProfileError as exc:
        print(f"edge-agent: cannot profile {folder}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    model, means = reference["model"], {k: v["mean"] for k, v in reference["inputs"].items()}
    print(f"profiled {model['name']} {model['version']} on {reference['samples']} frames of "
          f"{source}: brightness {means['brightness']:.1f}, contrast {means['contrast']:.1f}, "
          f"sharpness {means['sharpness']:.0f}; wrote the reference into {path}")
    return EXIT_OK


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
    parser.set_defaults(handler=cmd_profile)
    return parser
