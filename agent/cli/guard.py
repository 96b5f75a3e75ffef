"""The model tools' commands behind one guard: a tool's known error is one line on stderr and exit 1.

Apart from agent.cli.model so that agent.cli.model_pack, which model.py loads for its parsers,
takes the guard without importing model.py back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from agent.cli.say import EXIT_FAILURE

__all__ = ["Handler", "guarded", "known_errors"]

Handler = Callable[[argparse.Namespace], int]


def known_errors() -> tuple[type[Exception], ...]:
    """The errors a tool reports as a one-line message (imported late: they pull in OpenCV and ONNX)."""
    from agent.models import BundleError, ManifestError, SpecMismatchError
    from agent.runtime import EngineError
    from agent.tools import ToolError
    from agent.vision import TransformError

    return (ToolError, ManifestError, SpecMismatchError, TransformError, EngineError, BundleError,
            FileNotFoundError, PermissionError, IsADirectoryError)


def guarded(command: str, handler: Handler) -> Handler:
    """``handler`` with the tools' errors printed as ``edge-agent model <command>: <message>``."""

    def run(args: argparse.Namespace) -> int:
        from agent.models import FetchError

        try:
            return handler(args)
        except FetchError as exc:
            print(f"edge-agent model {command}: {exc.message}", file=sys.stderr)
        except known_errors() as exc:
            print(f"edge-agent model {command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    return run
