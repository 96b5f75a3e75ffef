"""``edge-agent model build MODEL.onnx`` (also ``python -m agent.cli.build``): arguments, output, exit codes.

The build itself (cache, worker process, TensorRT) is agent.models.build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.cli.progress import ProgressBoard
from agent.models import DEFAULT_WORKSPACE_MB

__all__ = ["add_build_parser", "build_main", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build`` to a ``model`` sub-command group; it runs :func:`build_main`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "build", help="build (or fetch from the cache) the TensorRT engine of an ONNX model "
        "on this device")
    _add_arguments(parser)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the ONNX model")
    parser.add_argument("--store", type=Path, default=Path("engines"),
                        help="model store whose .engine-cache holds engines (default: engines)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"), default="auto")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME:MIN:OPT:MAX",
                        help="profile of a dynamic input, dims joined by 'x'; repeatable")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB)
    parser.add_argument("--sparse", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--dla-core", type=int, default=None)
    parser.add_argument("--version-compatible", action="store_true",
                        help="build a plan the lean runtime can run")
    parser.add_argument("--output", type=Path, default=None, help="also copy the engine here")
    parser.set_defaults(func=build_main)


def build_main(args: argparse.Namespace) -> int:
    """Run a parsed ``model build``: 0 built or cached, 2 bad request, 1 build failed."""
    from agent.models import (
        BuildProgress,
        BuildSpec,
        BuildSpecError,
        EngineCache,
        copy_engine,
        ensure_engine,
        parse_shape,
    )
    from agent.runtime import EngineError

    try:
        shapes = dict(parse_shape(text) for text in args.shape)
        spec = BuildSpec(precision=args.precision, shapes=shapes, workspace_mb=args.workspace_mb,
                         sparse=args.sparse, dla_core=args.dla_core,
                         version_compatible=args.version_compatible)
    except BuildSpecError as exc:
        print(f"edge-agent model build: {exc}", file=sys.stderr)
        return EXIT_USAGE

    board = ProgressBoard()
    report = board.reporter()
    steps: dict[str, int] = {}

    def show(progress: BuildProgress) -> None:
        """TensorRT's phases as stages: a phase with steps (said at its start) fills its bar as they pass;
        one without goes from 0 to done."""
        if progress.event == "start":
            steps[progress.phase] = progress.steps
        total = steps.get(progress.phase) or 1
        done = total if progress.event == "finish" else min(progress.step, total) if progress.event == "step" else 0
        report(progress.phase, done, total)

    try:
        with board:
            built = ensure_engine(args.model, spec, EngineCache.in_store(args.store), on_progress=show)
    except BuildSpecError as exc:
        print(f"edge-agent model build: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as exc:
        print(f"edge-agent model build: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.output is not None:
        copy_engine(built, args.output)
    print(f"{'cached' if built.cached else 'built'} {built.path} ({built.key.precision}, "
          f"TensorRT {built.key.tensorrt_version}, {built.key.gpu_name} "
          f"sm{built.key.compute_capability})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.cli.build MODEL.onnx [options]``."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.build",
                                     description="Build the TensorRT engine of an ONNX model.")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return build_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
