"""``python -m agent.cli.bench`` (``make bench``): the benches of agent.dev.bench, printed as they run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import agent.dev.bench as dev_bench
from agent.cli.say import EXIT_OK, fail, say
from agent.dev import CAMERA_COUNTS, SHADOW_ROUNDS, SHADOW_S, DevError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the bench's options and run it; the figures go to stdout, 1 when a bench cannot go on."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.bench",
                                     description=(dev_bench.__doc__ or "").splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--only", choices=dev_bench.BENCHES, default=None)
    parser.add_argument("--camera-frames", type=int, default=60, help="frames per camera in the cameras run")
    parser.add_argument("--cameras", default=",".join(map(str, CAMERA_COUNTS)),
                        help="camera counts of the cameras run, comma separated")
    parser.add_argument("--shadow-rounds", type=int, default=SHADOW_ROUNDS,
                        help="shadow on rounds (each after an off one)")
    parser.add_argument("--shadow-seconds", type=float, default=SHADOW_S, help="length of a shadow round")
    parser.add_argument("--deploys", type=int, default=dev_bench.DEPLOY_GAP_DEPLOYS,
                        help="deployments per means and condition in the deploy-gap run")
    parser.add_argument("--means", default=",".join(dev_bench.MEANS),
                        help=f"the deploy-gap run's means, comma separated, of {', '.join(dev_bench.MEANS)}")
    parser.add_argument("--camera-fps", type=float,
                        help="the deploy-gap run's cameras at this rate (a real camera's) instead of unpaced")
    args = parser.parse_args(argv)
    if args.camera_fps is not None and args.camera_fps <= 0:
        parser.error(f"--camera-fps must be above 0, got {args.camera_fps:g}")
    means = tuple(m for m in args.means.split(",") if m)
    unknown = [m for m in means if m not in dev_bench.MEANS]
    if unknown:
        parser.error(f"unknown means {', '.join(unknown)}; known: {', '.join(dev_bench.MEANS)}")
    try:
        dev_bench.run_bench(args.demo, say, frames=args.frames, rounds=args.rounds, swaps=args.swaps,
                            only=args.only, camera_frames=args.camera_frames,
                            cameras=tuple(int(n) for n in args.cameras.split(",")),
                            shadow_rounds=args.shadow_rounds, shadow_s=args.shadow_seconds,
                            deploys=args.deploys, means=means, camera_fps=args.camera_fps)
    except DevError as exc:
        return fail("bench", exc)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
