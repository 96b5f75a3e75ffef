"""The house's rules that import-linter does not state (docs/architecture.md): agent/ holds only
packages, every package has a door that names its public surface, and no package reaches past
another's door into its modules."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import agent

AGENT = Path(agent.__file__).parent
ROOT = AGENT.parent
PACKAGES = sorted(p.name for p in AGENT.iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(package: str, name: str) -> bool:
    """Whether ``from <package> import <name>`` takes a module (a function may share a module's name)."""
    return inspect.ismodule(getattr(importlib.import_module(package), name, None))


def test_agent_holds_only_packages():
    loose = sorted(p.name for p in AGENT.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []
    assert len(PACKAGES) >= 14, PACKAGES


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_door_names_its_public_surface(package: str):
    door = importlib.import_module(f"agent.{package}")
    names = getattr(door, "__all__", None)
    assert names, f"agent/{package}/__init__.py has no __all__"
    missing = [name for name in names if not hasattr(door, name)]
    assert missing == [], f"agent.{package}.__all__ names what the door does not give"
    assert len(set(names)) == len(names), "a name twice in __all__"


def test_no_package_imports_past_another_packages_door():
    """``from agent.<other>.<module> import x`` is refused: only ``from agent.<other> import x``."""
    past = []
    for path in sorted(AGENT.rglob("*.py")):
        module = _module_name(path)
        own = module.split(".")[1] if module.count(".") else ""
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            parts = node.module.split(".")
            if parts[0] != "agent" or len(parts) < 2 or parts[1] == own:
                continue
            if len(parts) > 2:
                past.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
            past += [f"{path.relative_to(ROOT)}:{node.lineno} module {node.module}.{a.name}"
                     for a in node.names if _is_module(node.module, a.name)]
    assert past == []
