"""The lazy door every package's ``__init__`` is built on (PEP 562).

A door names its public surface in ``__all__`` and maps each name to the module it
comes from; ``door_getattr`` imports that module on the name's first use, so importing
one module of a package does not import its siblings (a Jetson's capture-only venv, a
fast CLI). Nothing is cached in the package's namespace: the door always hands out
what its module holds now (a test's monkeypatch is undone for the door too).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["door_getattr"]


def door_getattr(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``'s door: ``homes`` maps each name to its module."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    return __getattr__
