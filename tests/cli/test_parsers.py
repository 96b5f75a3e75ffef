"""The ``edge-agent`` parser loads only the invoked command's group, and the groups name every command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from agent.cli.main import GROUPS, MODEL_GROUPS, OWN_COMMANDS, build_parser
from tests.support.agentproc import REPO

HEAVY = ("onnx", "onnxruntime", "cv2", "torch", "agent.tools")
"""What a control command (``status``, ``deploy``...) has no use for: each costs a CLI start tenths of a second."""


def _commands(parser: argparse.ArgumentParser, *path: str) -> set[str]:
    """The subcommand names under ``path`` (``()``: the top level, ``("model",)``: the model tools)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if not path:
                return set(action.choices)
            return _commands(action.choices[path[0]], *path[1:])
    return set()


def test_the_groups_name_every_command_of_the_full_parser_and_each_group_defines_its_own():
    full = build_parser()
    assert _commands(full) == OWN_COMMANDS | set(GROUPS)
    assert _commands(full, "model") == set(MODEL_GROUPS)
    for command, group in GROUPS.items():
        defined = _commands(build_parser([command])) - OWN_COMMANDS
        assert command in defined and {c for c in defined if GROUPS[c] != group} == set(), (command, defined)
    for command, group in MODEL_GROUPS.items():
        defined = _commands(build_parser(["model", command]), "model")
        assert command in defined and {c for c in defined if MODEL_GROUPS[c] != group} == set(), (command, defined)


@pytest.mark.parametrize("words", [[], ["--help"], ["nope"]])
def test_help_and_unknown_words_get_every_command(words):
    parser = build_parser(words)
    assert _commands(parser) == OWN_COMMANDS | set(GROUPS)
    assert _commands(parser, "model") == set(MODEL_GROUPS)


@pytest.mark.parametrize("words", [["model"], ["model", "--help"], ["model", "nope"]])
def test_model_help_and_an_unknown_model_word_get_every_model_tool(words):
    assert _commands(build_parser(words), "model") == set(MODEL_GROUPS)


@pytest.mark.parametrize("words", [["status", "--broker", "mqtt://127.0.0.1:9", "--device", "d"],
                                   ["deploy", "--help"], ["cameras", "list", "--config", "c.toml"],
                                   ["model", "pack", "--help"]])
def test_a_command_imports_neither_onnx_nor_opencv_nor_the_model_tools_to_parse_its_arguments(words):
    code = ("import json, sys\nfrom agent.cli.main import build_parser\n"
            f"build_parser({words!r})\nprint(json.dumps(sorted(set({list(HEAVY)!r}) & set(sys.modules))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(done.stdout) == [], f"{words[0]} imported them"
