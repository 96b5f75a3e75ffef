"""The ``edge-agent`` command: run the daemon, check a config, print schemas, talk to a fleet."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import __version__
from agent.core import AgentConfig, ConfigError, load_config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
OWN_COMMANDS = frozenset({"run", "check-config", "schema"})
"""Commands this module defines itself: for them the other commands' parsers (and the model tools,
fleet and terminal code they import) are not loaded, so that ``run`` (systemd, every restart) and
``check-config`` start in about half the time."""
GROUPS = {"deploy": "control", "rollback": "control", "promote": "control", "status": "control",
          "ping": "control", "top": "top", "cameras": "cameras", "fleet": "fleet", "model": "model"}
"""Each other command and the group of parsers that defines it: a command loads only its own group's
parsers and what they import (``status`` neither ONNX nor OpenCV, a CLI start of a third of a second
instead of over one). An unknown word, ``--help`` and no command at all get every parser."""
MODEL_GROUPS = {"keygen": "keys", "sign": "keys", "build": "build", "profile": "profile",
                "export": "tools", "quantize": "tools", "simplify": "tools", "prune": "tools",
                "compare": "tools", "distill": "tools", "pack": "tools", "inspect": "tools"}
"""The same for the subcommands of ``model``."""

Handler = Callable[[argparse.Namespace], int]


def _config_or_exit(path: Path) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"edge-agent: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from exc


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_or_exit(args.config)  # before the device stack is imported: a bad config is told at once
    from agent.core import bind_context, configure_logging
    from agent.device import StartupError, run_agent

    configure_logging(config.agent.log_level)
    bind_context(device_id=config.agent.device_id, model_version=None)
    from agent.cli.summary import print_summary

    try:
        return run_agent(config, lambda agent: print_summary(agent, args.config))
    except StartupError as exc:
        import structlog

        structlog.get_logger("agent").error("startup_failed", error=str(exc))
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config_or_exit(args.config)
    cameras = ", ".join(c.name for c in config.cameras)
    print(f"{args.config}: ok (device {config.agent.device_id}, broker {config.mqtt.url}, "
          f"cameras {cameras})")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from agent.wire import json_schemas

    schemas = json_schemas()
    if args.name:
        if args.name not in schemas:
            print(f"edge-agent: no schema named {args.name!r}; known: {', '.join(sorted(schemas))}",
                  file=sys.stderr)
            return EXIT_USAGE
        schemas = {args.name: schemas[args.name]}
    json.dump(schemas, sys.stdout, indent=2, sort_keys=True)
    print()
    return EXIT_OK


def build_parser(words: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``edge-agent`` parser for the arguments ``words``: the parsers of the command they name (the
    other groups are not imported); every parser when ``words`` is None or names no known command."""
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    run.add_argument("--config", type=Path, default=Path("/etc/edge-agent/config.toml"))
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=cmd_check_config)

    command = words[0] if words else None
    if command not in OWN_COMMANDS:
        _add_other_parsers(sub, GROUPS.get(command or ""), words[1] if words and len(words) > 1 else None)
    schema = sub.add_parser("schema", help="print the JSON Schemas of the MQTT payloads")
    schema.add_argument("name", nargs="?", help="one payload's schema")
    schema.set_defaults(handler=cmd_schema)
    return parser


ADDERS = {"control": "agent.cli.control:add_control_parsers", "top": "agent.cli.top:add_top_parser",
          "cameras": "agent.cli.cameras:add_camera_parsers", "fleet": "agent.cli.fleet:add_fleet_parsers"}
"""Where each group of ``GROUPS`` adds its parsers (``module:function``), in the order ``--help`` lists them."""
MODEL_ADDERS = {"keys": "agent.cli.control:add_key_parsers", "build": "agent.cli.build:add_build_parser",
                "profile": "agent.cli.profile:add_profile_parser", "tools": "agent.cli.model:add_tool_parsers"}
"""The same for ``MODEL_GROUPS``."""


def _add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], adders: dict[str, str],
                 group: str | None) -> None:
    """Import and call the adder of ``group``, or every adder when it is None."""
    for name, adder in adders.items():
        if group in (None, name):
            module, function = adder.split(":")
            getattr(importlib.import_module(module), function)(sub)


def _add_other_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], group: str | None,
                       model_command: str | None) -> None:
    """The parsers of ``group`` (of ``GROUPS``), or every group's when it is None."""
    _add_parsers(sub, ADDERS, group)
    if group in (None, "model"):
        model = sub.add_parser("model", help="model tools: keys, signing, engine builds, drift profiles, export, "
                               "quantize, prune, compare, pack")
        model_sub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
        _add_parsers(model_sub, MODEL_ADDERS, MODEL_GROUPS.get(model_command or "") if group else None)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    handler: Handler = getattr(args, "handler", None) or args.func
    return handler(args)
