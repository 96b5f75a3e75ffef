"""A small tmpfs the tests mount to fill a disk for real (needs root; skips with the reason)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "small_tmpfs"]


@contextmanager
def small_tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MiB tmpfs at ``path`` for the block; skip where it is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root; not running as root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, chunk: int = 64 * 1024) -> Path:
    """Write ``path`` until the filesystem is full; the file holds what fitted."""
    block = b"\0" * chunk
    with path.open("wb") as handle:
        while True:
            try:
                handle.write(block)
                handle.flush()
            except OSError:
                break
    return path
