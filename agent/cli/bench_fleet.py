"""``python -m agent.cli.bench_fleet`` (``make bench-fleet``): agent.dev.bench_fleet's phases, printed as JSON."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import agent.dev.bench_fleet as dev_bench_fleet
from agent.cli.say import EXIT_OK, fail, say
from agent.dev import DevError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the consumer and fleet phases, print each one's figures as it ends."""
    parser = argparse.ArgumentParser(prog="python -m agent.cli.bench_fleet", description=dev_bench_fleet.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000, help="simulated devices on one mosquitto")
    parser.add_argument("--rollout-devices", type=int, default=1000, help="of them, those the rollout targets")
    parser.add_argument("--flood-rate", type=float, default=dev_bench_fleet.FLOOD_RATE,
                        help="messages/s the flood publisher offers per consumer instance")
    parser.add_argument("--skip-fleet", action="store_true", help="only the consumers under the flood")
    parser.add_argument("--skip-consumers", action="store_true", help="only the simulated fleet and the rollout")
    parser.add_argument("--profile", type=int, metavar="MESSAGES",
                        help="only print a cProfile of the consumer's handling of this many messages")
    parser.add_argument("--sim-transport", choices=("session", "fast"), default=dev_bench_fleet.SIM_TRANSPORT,
                        help="the simulated devices' connection (fleet simulate --transport; default fast)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.profile:
        say(dev_bench_fleet.profile_consumer(args.profile))
        return EXIT_OK
    if not 0 < args.rollout_devices <= args.devices:
        parser.error("--rollout-devices must be within 1..--devices")
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    try:
        if not args.skip_consumers:
            say("--- consumers, flooded")
            result["consumers"] = dev_bench_fleet.bench_consumers(args.flood_rate)
            say(json.dumps(result["consumers"], indent=1))
        if not args.skip_fleet:
            say(f"--- {args.devices} simulated devices, rollout over {args.rollout_devices}")
            result["fleet"] = dev_bench_fleet.bench_fleet(args.devices, args.rollout_devices, args.sim_transport)
            say(json.dumps(result["fleet"], indent=1))
    except DevError as exc:
        return fail("bench_fleet", exc)
    result["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
