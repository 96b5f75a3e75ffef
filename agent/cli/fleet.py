"""``edge-agent fleet deploy | status | watch | dashboard | simulate``: the fleet side of the wire."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli.connect import add_broker_arguments, connect_broker
from agent.cli.control import add_shadow_arguments, artifact_format, shadow_terms, signed_fields, valid_days_argument
from agent.cli.progress import ProgressBoard
from agent.cli.say import run_until_signal, say
from agent.fleet import (
    FORMATS,
    ControlError,
    PlanError,
    RecordError,
    RolloutPlan,
    parse_duration,
    parse_percent,
    parse_percents,
)

__all__ = ["add_fleet_parsers"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edge-agent" / "rollouts"


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"edge-agent: {message}", file=sys.stderr)
    return code


# ----- fleet deploy ---------------------------------------------------------------------------
def _plan(args: argparse.Namespace) -> RolloutPlan:
    return RolloutPlan(parse_percent(args.canary, "--canary"), parse_percents(args.waves, "--waves"),
                       parse_percent(args.abort_failures, "--abort-failures"),
                       parse_duration(args.wait_healthy, "--wait-healthy"))


def cmd_fleet_deploy(args: argparse.Namespace) -> int:
    from agent.core import configure_logging
    from agent.fleet import (
        FleetLink,
        Rollout,
        RolloutError,
        RolloutSpec,
        RolloutStore,
        check_resume,
        new_rollout_id,
        plan_rollout,
    )

    configure_logging(args.log_level)
    try:
        plan = _plan(args)
        deploy_timeout = parse_duration(args.deploy_timeout, "--deploy-timeout")
        shadow = shadow_terms(args)
    except PlanError as exc:
        return _fail(str(exc), EXIT_USAGE)
    client = connect_broker(args)
    store = RolloutStore(args.state_dir)
    rollout_id = args.rollout_id or new_rollout_id()
    try:
        saved = store.load(rollout_id)
    except RecordError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if saved is not None:
        sha256, statement, artifact = saved.sha256, saved.statement, saved.format
    else:
        artifact = artifact_format(args.url, args.format)  # what the devices are told the bytes are
        with ProgressBoard() as board:
            fields = signed_fields(url=args.url, sha256=args.sha256, name=args.name, version=args.version,
                                   format=artifact, key=args.sign, valid_days=args.valid_days,
                                   progress=board.reporter())
        sha256, statement = fields["sha256"], fields.get("statement")
    spec = RolloutSpec(args.group, args.name, args.version, args.url, sha256, artifact, plan, statement,
                       saved.shadow if saved is not None else shadow)

    async def main() -> int:
        async with FleetLink(client) as link:
            if saved is not None:
                check_resume(saved, spec)
                print(f"resuming rollout {rollout_id} at stage {saved.stage} ({saved.outcome})", flush=True)
                record = saved
            else:
                record = plan_rollout(rollout_id, spec, link.view)
            with ProgressBoard() as board:
                rollout = Rollout(link, record, store, report=say, progress=board.reporter(),
                                  deploy_timeout_s=deploy_timeout)
                link.on_message = rollout.observe
                result = await rollout.run()
        return EXIT_OK if result.ok else EXIT_FAILURE

    try:
        return asyncio.run(main())
    except (RecordError, RolloutError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ControlError as exc:
        return _fail(f"{exc} (state saved: resume with --rollout-id {rollout_id})")


# ----- fleet simulate -------------------------------------------------------------------------
def cmd_fleet_simulate(args: argparse.Namespace) -> int:
    from agent.core import configure_logging
    from agent.sim import SimError, SimFleet, SimProcesses, SimSpec, auto_processes

    configure_logging(args.log_level)
    try:
        spec = SimSpec(url=args.broker, devices=args.n, group=args.group, prefix=args.prefix,
                       id_prefix=args.id_prefix, model_name=args.model_name, model_version=args.model_version,
                       fail_rate=args.fail_rate, fail_mode=args.fail_mode,
                       slow_deploy_s=parse_duration(args.slow_deploy, "--slow-deploy"),
                       probation_s=parse_duration(args.probation, "--probation"),
                       shadow_agreement=args.shadow_agreement,
                       shadow_s=parse_duration(args.shadow_time, "--shadow-time"),
                       period_s=parse_duration(args.period, "--period"), alarm_rate=args.alarm_rate,
                       state_dir=args.state_dir, transport=args.transport)
        processes = args.processes if args.processes is not None else auto_processes(spec.devices)
        shards = SimProcesses(spec, processes) if processes > 1 else None
    except (SimError, PlanError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    if shards is not None:
        shards.start()

    async def main(stop: asyncio.Event) -> int:
        fleet = shards or SimFleet(spec)
        task = asyncio.create_task(fleet.run(stop))
        ready = asyncio.create_task(fleet.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if fleet.ready.is_set():
            where = f" in {shards.processes} processes" if shards else ""
            print(f"simulating {spec.devices} devices of group {spec.group} on {spec.url}{where}", flush=True)
        await task
        ready.cancel()
        return EXIT_OK

    try:
        return run_until_signal(main)
    except SimError as exc:
        return _fail(str(exc), EXIT_USAGE)


# ----- parsers --------------------------------------------------------------------------------
def _simulator_broker(parser: argparse.ArgumentParser) -> None:
    """The simulated agents' own broker (they connect as agents do, so no ``--config``)."""
    parser.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--prefix", default="edge")
    parser.add_argument("--username")
    parser.add_argument("--password-file", help="file holding the broker password")


def _deploy_parser(fleet: Any) -> None:
    deploy = fleet.add_parser("deploy", help="staged rollout to a group: canary, waves, abort and roll back")
    add_broker_arguments(deploy)
    deploy.add_argument("--group", required=True)
    deploy.add_argument("--name", required=True)
    deploy.add_argument("--version", required=True)
    deploy.add_argument("--url", required=True, help="http(s):// or file:// URL of the artifact, as devices see it")
    deploy.add_argument("--sha256", default="auto", help="hex digest, or 'auto' to compute it from --url")
    deploy.add_argument("--sign", type=Path, help="ed25519 private key (PEM): hash the artifact here and sign a "
                        "statement binding name, version, format and that sha256")
    valid_days_argument(deploy)
    deploy.add_argument("--format", choices=FORMATS,
                        help="default: what the artifact's content is (tar bundle, ONNX model, TensorRT engine)")
    deploy.add_argument("--canary", default="5%", help="share of the group deployed first (default 5%%)")
    deploy.add_argument("--waves", default="25%,50%,100%", help="cumulative shares after the canary")
    deploy.add_argument("--abort-failures", default="10%",
                        help="abort when failed devices exceed this share of those tried (default 10%%)")
    deploy.add_argument("--wait-healthy", default="60s", help="watch each stage this long before the next")
    deploy.add_argument("--deploy-timeout", default="15m", help="a device with no outcome after this has failed")
    deploy.add_argument("--rollout-id", help="name of the rollout; an existing one is resumed")
    deploy.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where rollouts are recorded")
    deploy.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="structured log events on stderr (the rollout's lines go to stdout, its bars to stderr)")
    add_shadow_arguments(deploy)
    deploy.set_defaults(handler=cmd_fleet_deploy)


def _simulate_parser(fleet: Any) -> None:
    sim = fleet.add_parser("simulate", help="N simulated agents (real protocol, no inference) on one machine")
    _simulator_broker(sim)
    sim.add_argument("-n", type=int, required=True, help="number of devices")
    sim.add_argument("--group", default="sim")
    sim.add_argument("--id-prefix", default="sim")
    sim.add_argument("--model-name", default="text-det")
    sim.add_argument("--model-version", default="1.0.0")
    sim.add_argument("--fail-rate", type=float, default=0.0, help="share of devices (by hash) failing a version")
    sim.add_argument("--fail-mode", choices=("probation", "download", "shadow"), default="probation",
                     help="how a failing device fails: rolled back in probation, at download, or in shadow "
                          "(agreement 0: a shadow deploy is discarded)")
    sim.add_argument("--shadow-agreement", type=float, default=0.98,
                     help="agreement a shadow deploy reports on a device that does not fail it")
    sim.add_argument("--shadow-time", default="1s", help="how long a simulated shadow run lasts before its decision")
    sim.add_argument("--slow-deploy", default="0.5s", help="time from received to active")
    sim.add_argument("--probation", default="1s", help="time from active to committed")
    sim.add_argument("--transport", choices=("session", "fast"), default="session",
                     help="each device's connection: the agent's own MQTT session (default), or fast: the same "
                          "wire on a batching client at a fraction of the CPU per message, no outbox (10k devices "
                          "on a small machine)")
    sim.add_argument("--period", default="5s", help="telemetry period")
    sim.add_argument("--alarm-rate", type=float, default=0.0, help="share of devices whose drift is in alarm")
    sim.add_argument("--state-dir", type=Path, help="command journals (default: a temporary folder)")
    sim.add_argument("--processes", type=int,
                     help="simulator processes, the devices split among them (default: one per 1000 devices)")
    sim.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    sim.set_defaults(handler=cmd_fleet_simulate)


def add_fleet_parsers(sub: Any) -> None:
    from agent.cli.fleet_watch import add_watch_parsers

    fleet = sub.add_parser("fleet", help="fleet tools: staged rollouts, status, telemetry consumer, simulator")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="FLEET_COMMAND")
    _deploy_parser(fleet_sub)
    add_watch_parsers(fleet_sub, add_broker_arguments)
    _simulate_parser(fleet_sub)
