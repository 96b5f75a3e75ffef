"""``edge-agent fleet status | watch | events | dashboard``: reading the fleet's state and telemetry."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.cli.connect import connect_broker
from agent.fleet import ControlError

__all__ = ["add_watch_parsers"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_STATUS_WINDOW_S = 6.0
"""Retained state arrives at once; this leaves room for one telemetry period of the agent (5 s)."""
DEFAULT_DASHBOARD_PORT = 8080


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from agent.core import configure_logging
    from agent.fleet import collect, device_rows, render_table

    configure_logging("warning")
    try:
        view = asyncio.run(collect(connect_broker(args), args.window))
    except ControlError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    rows = device_rows(view, args.group, args.alarm)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(render_table(rows))
    return EXIT_OK


def _until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    from agent.cli.say import run_until_signal

    try:
        return run_until_signal(main)
    except ControlError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _serve(args: argparse.Namespace, dashboard_port: int | None, listen_sets_dashboard: bool) -> int:
    """``--listen HOST:PORT`` is the address of the page (``dashboard``) or of /metrics (``watch``);
    every HTTP server of the command binds its host."""
    from agent.core import configure_logging
    from agent.fleet import LISTEN_HOST, Consumer, ConsumerOptions, FleetHttpServer, HttpAccess, parse_listen

    configure_logging(args.log_level)
    servers: list[FleetHttpServer] = []
    try:
        options = ConsumerOptions(share_group=args.share_group, max_devices=args.max_devices,
                                  tensorboard=args.tensorboard, instance_id=args.instance_id or "", qos=args.qos)
        consumer = Consumer(connect_broker(args), options)
        host, metrics_port = LISTEN_HOST, args.prometheus_port
        if args.listen is not None:
            host, port = parse_listen(args.listen)
            if listen_sets_dashboard:
                dashboard_port = port
            else:
                metrics_port = port
        access = HttpAccess.for_host(host, args.token_file)
        if dashboard_port is not None:
            shared_port = metrics_port in (None, dashboard_port)
            servers.append(FleetHttpServer(consumer, dashboard_port, metrics=shared_port, host=host, access=access))
        if metrics_port is not None and metrics_port != dashboard_port:
            servers.append(FleetHttpServer(consumer, metrics_port, dashboard=False, host=host, access=access))
    except (ValueError, ControlError) as exc:
        for server in servers:
            server.stop()
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if access.generated and servers:
        print(f"bearer token (required for /metrics and /api/fleet on {host}): {access.token}", flush=True)

    async def main(stop: asyncio.Event) -> int:
        for server in servers:
            server.start()
            print(f"listening on {server.url}", flush=True)
        try:
            await consumer.run(stop)
        finally:
            for server in servers:
                server.stop()
        return EXIT_OK

    return _until_signal(main)


def cmd_fleet_watch(args: argparse.Namespace) -> int:
    return _serve(args, args.dashboard_port, listen_sets_dashboard=False)


def cmd_fleet_dashboard(args: argparse.Namespace) -> int:
    return _serve(args, args.port, listen_sets_dashboard=True)


def cmd_fleet_events(args: argparse.Namespace) -> int:
    from agent.core import configure_logging
    from agent.fleet import EventFilter, stream_events

    configure_logging(args.log_level)
    try:
        selection = EventFilter(args.device, args.group, frozenset(args.kind or ()))
        client = connect_broker(args)
    except (ValueError, ControlError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def write(line: bytes) -> None:
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.buffer.flush()

    async def main(stop: asyncio.Event) -> int:
        await stream_events(client, selection, write, stop)
        return EXIT_OK

    return _until_signal(main)


def _consumer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--share-group", help="MQTT 5 shared subscription group: instances split the telemetry")
    parser.add_argument("--instance-id", help="this instance's name among its group (default: random)")
    parser.add_argument("--prometheus-port", type=int, help="serve /metrics on this port")
    parser.add_argument("--tensorboard", type=Path, help="write TensorBoard scalars under this folder")
    parser.add_argument("--max-devices", type=int, default=1000,
                        help="devices with their own metric labels; the rest are counted as _overflow")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1,
                        help="QoS of the telemetry subscription: 1 bounds the broker's queue (drops show as gaps), "
                             "0 lets the broker buffer")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the bearer token for /metrics and /api/fleet (default: none on "
                             "loopback, a new one printed at start on any other address)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def add_watch_parsers(fleet: Any, connection: Callable[[argparse.ArgumentParser], None]) -> None:
    status = fleet.add_parser("status", help="a table of the devices: status, model, fps, latency, alarms")
    connection(status)
    status.add_argument("--group", help="only devices of this group")
    status.add_argument("--alarm", action="store_true", help="only devices with an alarm")
    status.add_argument("--window", type=float, default=DEFAULT_STATUS_WINDOW_S,
                        help="seconds to listen for telemetry after the retained state")
    status.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    status.set_defaults(handler=cmd_fleet_status)

    watch = fleet.add_parser("watch", help="consume telemetry: Prometheus, TensorBoard, gap detection")
    connection(watch)
    _consumer_options(watch)
    watch.add_argument("--listen", metavar="HOST:PORT",
                       help="serve /metrics here (default host 127.0.0.1; replaces --prometheus-port); "
                            "any other HTTP port binds the same host")
    watch.add_argument("--dashboard-port", type=int, help="also serve the dashboard on this port")
    watch.set_defaults(handler=cmd_fleet_watch)

    events = fleet.add_parser("events", help="print the devices' events live, one JSON object a line")
    connection(events)
    events.add_argument("--device", help="only this device's events")
    events.add_argument("--group", help="only events of devices in this group (from their retained status)")
    events.add_argument("--kind", action="append",
                        help="only events of this kind (object_entered, zone_left, ...); repeatable")
    events.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    events.set_defaults(handler=cmd_fleet_events)

    dashboard = fleet.add_parser("dashboard", help="a web page of the fleet, served by a consumer")
    connection(dashboard)
    _consumer_options(dashboard)
    dashboard.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT)
    dashboard.add_argument("--listen", metavar="HOST:PORT",
                           help="serve the page here (default 127.0.0.1, port --port); "
                                "a non-loopback host requires a bearer token")
    dashboard.set_defaults(handler=cmd_fleet_dashboard)
