"""The ``edge-agent`` command: run the daemon, check a config, print schemas, talk to a fleet."""

from __future__ import annotations

import argparse
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
``check-config`` start in about half the time. Anything else, ``--help`` included, gets every parser."""

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


def build_parser(own_only: bool = False) -> argparse.ArgumentParser:
    """The ``edge-agent`` parser; ``own_only``: only ``OWN_COMMANDS`` (nothing else is imported)."""
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    run.add_argument("--config", type=Path, default=Path("/etc/edge-agent/config.toml"))
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=cmd_check_config)

    if not own_only:
        _add_other_parsers(sub)
    schema = sub.add_parser("schema", help="print the JSON Schemas of the MQTT payloads")
    schema.add_argument("name", nargs="?", help="one payload's schema")
    schema.set_defaults(handler=cmd_schema)
    return parser


def _add_other_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.cli.build import add_build_parser
    from agent.cli.cameras import add_camera_parsers
    from agent.cli.control import add_control_parsers, add_key_parsers
    from agent.cli.fleet import add_fleet_parsers
    from agent.cli.model import add_tool_parsers
    from agent.cli.profile import add_profile_parser
    from agent.cli.top import add_top_parser

    add_control_parsers(sub)
    add_top_parser(sub)
    add_camera_parsers(sub)
    add_fleet_parsers(sub)
    model = sub.add_parser("model", help="model tools: keys, signing, engine builds, drift profiles, export, "
                           "quantize, prune, compare, pack")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    add_key_parsers(model_sub)
    add_build_parser(model_sub)
    add_profile_parser(model_sub)
    add_tool_parsers(model_sub)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(own_only=bool(words) and words[0] in OWN_COMMANDS)
    args = parser.parse_args(words)
    handler: Handler = getattr(args, "handler", None) or args.func
    return handler(args)
