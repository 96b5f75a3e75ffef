"""One error root: every error the agent defines is an AgentError, what reaches a reply is a CodedError,
and no class takes a builtin's name."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import agent
from agent.core.errors import AgentError, CodedError
from agent.device.commands import CommandFailed
from agent.models.fetch import FetchError
from agent.models.manager import DeployFailed
from agent.vision.cameras import CameraError
from agent.wire import DeploymentStep

AGENT = Path(agent.__file__).parent
FAMILY_PACKAGES = ("core", "wire", "mqtt", "runtime", "models", "monitor", "vision", "results", "device", "fleet",
                   "sim", "tools", "dev", "cli")
"""Every package of agent/ (tests/test_house.py checks that agent/ holds nothing else)."""
STANDALONE = {"agent.dev.rtsp_serve"}
"""Run by the system Python with GStreamer's bindings, never imported by the agent."""


def _modules(package: str) -> list[str]:
    module = importlib.import_module(f"agent.{package}")
    return [m.name for m in pkgutil.walk_packages(module.__path__, f"agent.{package}.") if m.name not in STANDALONE]


@pytest.mark.parametrize("package", FAMILY_PACKAGES)
def test_every_error_a_package_defines_derives_from_the_agent_root(package: str):
    strays = []
    for name in _modules(package):
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name
                    and not issubclass(value, AgentError)):
                strays.append(f"{name}.{value.__name__}")
    assert strays == []


def test_no_class_of_the_agent_takes_a_builtins_name():
    taken = set(dir(builtins))
    shadowing = [f"{path.relative_to(AGENT)}:{node.lineno} {node.name}"
                 for path in sorted(AGENT.rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text(), str(path)))
                 if isinstance(node, ast.ClassDef) and node.name in taken]
    assert shadowing == []


def test_what_reaches_a_reply_carries_a_code_and_a_message():
    failures = [CommandFailed("busy", "retry later", {"step": "received"}),
                DeployFailed(DeploymentStep.LOADING, "load_failed", "bad"),
                FetchError("hash_mismatch", "sha256 differs"),
                CameraError("camera_exists", "camera 'door' already exists")]
    for failure in failures:
        assert isinstance(failure, CodedError)
        assert failure.code and failure.message
    assert failures[0].result == {"step": "received"}
    assert failures[1].step is DeploymentStep.LOADING and str(failures[1]) == "loading: bad"
    assert str(failures[2]) == "sha256 differs"


def test_a_code_that_is_not_snake_case_is_refused():
    with pytest.raises(ValueError, match="snake_case"):
        CodedError("Not-A-Code", "message")
