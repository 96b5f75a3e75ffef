"""``python -m agent.cli.config_doc > docs/configuration.md``: print the configuration page (agent.dev.config_doc)."""

from __future__ import annotations

import sys

from agent.dev import render_markdown

__all__ = ["main"]

EXIT_OK = 0


def main() -> int:
    """Write the rendered page to stdout, byte for byte what docs/configuration.md must hold."""
    sys.stdout.write(render_markdown())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
