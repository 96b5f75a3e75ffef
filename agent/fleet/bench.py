"""Fleet benchmark: simulated devices on one mosquitto, a staged rollout, one and two consumers.

    python -m agent.fleet.bench --devices 500 [--devices 1000 ...] [--json results.json]

For each fleet size it starts its own mosquitto on a free port, the simulator
(``edge-agent fleet simulate``, one process, one MQTT connection per device),
then measures:
- connect: time until every device's retained status says online;
- rollout: ``edge-agent fleet deploy`` (canary 5 %, waves 25/50/100 %, no health
  wait), wall time to the end, and per device the time from its deploy command
  to its ``committed`` state (p50, p99); the simulated deployment itself takes
  ``SIM_DEPLOY_S + SIM_PROBATION_S``;
- consumers: ``edge-agent fleet watch`` in a share group, one then two
  instances, messages/s ingested per instance and CPU seconds per 1000 messages
  (from their /metrics): at the fleet's own telemetry rate, then flooded by one
  publisher sending latency payloads as fast as it can (the consumers' ceiling);
- mosquitto's CPU during each phase, from /proc/<pid>/stat.
Numbers depend on the machine: the simulator, the broker and the consumers
share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..mqtt.broker import EmbeddedBroker, free_port
from ..mqtt.schema import LatencyPayload, StageLatency, encode_payload
from ..mqtt.settings import parse_broker_url
from .control import ControlClient
from .link import FleetLink

__all__ = ["main"]

SIM_DEPLOY_S = 0.5
SIM_PROBATION_S = 1.0
TELEMETRY_PERIOD_S = 5.0
"""The agent's default latency period; each period a simulated device sends 5 telemetry messages."""
CONNECT_TIMEOUT_S = 600.0
ROLLOUT_TIMEOUT_S = 1800.0
CONSUMER_WINDOW_S = 20.0
CONSUMER_WARMUP_S = 5.0
POLL_S = 0.5
SIM_STOP_TIMEOUT_S = 60.0
"""A clean stop publishes offline for every simulated device; past this the simulator is killed."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FLOOD_DEVICES = 200
FLOOD_INFLIGHT = 1000


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


class Phase:
    """Wall time and mosquitto CPU over a stretch of the benchmark."""

    def __init__(self, broker_pid: int) -> None:
        self.pid = broker_pid
        self.started = time.monotonic()
        self.cpu = cpu_seconds(broker_pid)

    def end(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        cpu = cpu_seconds(self.pid) - self.cpu
        return {"wall_s": round(wall, 2), "mosquitto_cpu_percent": round(100 * cpu / wall, 1)}


async def wait_online(url: str, devices: int) -> None:
    async with FleetLink(ControlClient(url), ("status",)) as link:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while sum(d.status == "online" for d in link.view.devices.values()) < devices:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{devices} devices not online within {CONNECT_TIMEOUT_S:.0f}s")
            await link.wait_changed(POLL_S)


async def committed_at(url: str, rollout_id: str) -> dict[str, float]:
    async with FleetLink(ControlClient(url), ("deployment",)) as link:
        return {d.device_id: d.deployment.updated for d in link.view.devices.values()
                if d.deployment is not None and d.deployment.deployment_id.startswith(rollout_id)
                and d.deployment.state == "committed"}


def run_rollout(url: str, devices: int, work: Path, broker_pid: int) -> dict[str, Any]:
    artifact = work / "model.bin"
    artifact.write_bytes(b"benchmark artifact")
    rollout_id = f"bench-{devices}"
    phase = Phase(broker_pid)
    done = subprocess.run(cli("fleet", "deploy", "--broker", url, "--group", "bench", "--name", "text-det",
                              "--version", "2.0.0", "--url", artifact.as_uri(), "--canary", "5%", "--waves",
                              "25%,50%,100%", "--wait-healthy", "0s", "--rollout-id", rollout_id,
                              "--state-dir", str(work / "rollouts")),
                          capture_output=True, text=True, timeout=ROLLOUT_TIMEOUT_S)
    result: dict[str, Any] = phase.end()
    if done.returncode != 0:
        raise RuntimeError(f"rollout failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    record = json.loads((work / "rollouts" / f"{rollout_id}.json").read_text())
    commits = asyncio.run(committed_at(url, rollout_id))
    per_device = [commits[d] - e["sent_at"] for d, e in record["devices"].items() if d in commits]
    result.update(committed=len(commits), device_p50_s=round(statistics.median(per_device), 2),
                  device_p99_s=round(percentile(per_device, 0.99), 2),
                  simulated_deploy_s=SIM_DEPLOY_S + SIM_PROBATION_S)
    return result


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    messages = sum(float(m) for m in re.findall(r'^edge_fleet_messages_total\{kind="telemetry/[^"]+"\} (\S+)$',
                                                   text, re.M))
    cpu = re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M)
    return {"messages": messages, "cpu_s": float(cpu.group(1)) if cpu else 0.0}


def wait_http(port: int) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            scrape(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)


class Flood:
    """Publishes valid latency payloads for ``FLOOD_DEVICES`` devices as fast as one paho client can (QoS 1)."""

    def __init__(self, url: str) -> None:
        address = parse_broker_url(url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-flood-{os.getpid()}")
        self.client.max_inflight_messages_set(FLOOD_INFLIGHT)
        self.client.max_queued_messages_set(FLOOD_INFLIGHT * 4)
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _payload(self, device: str, seq: int) -> bytes:
        stage = StageLatency(p50_ms=20.0, p95_ms=28.0, p99_ms=35.0, max_ms=50.0, count=300)
        return encode_payload(LatencyPayload(device_id=device, ts=time.time(), seq=seq, window_frames=300,
                                             fps=15.0, frames_processed=seq, frames_dropped=0,
                                             stages={"end_to_end": stage}))

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            for i in range(FLOOD_DEVICES):
                device = f"flood-{i:04d}"
                while not self._stop.is_set():
                    info = self.client.publish(f"edge/{device}/telemetry/latency", self._payload(device, seq), qos=1)
                    if info.rc == paho.MQTT_ERR_SUCCESS:
                        self.sent += 1
                        break
                    time.sleep(0.001)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.disconnect()
        self.client.loop_stop()


def run_consumers(url: str, instances: int, broker_pid: int, devices: int, flood: bool = False) -> dict[str, Any]:
    ports = [free_port() for _ in range(instances)]
    processes = [subprocess.Popen(cli("fleet", "watch", "--broker", url, "--share-group", "bench",
                                      "--prometheus-port", str(port), "--log-level", "warning"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    try:
        for port in ports:
            wait_http(port)
        publisher = Flood(url) if flood else None
        if publisher is not None:
            publisher.start()
        time.sleep(CONSUMER_WARMUP_S)
        before = [scrape(port) for port in ports]
        sent_before = publisher.sent if publisher else 0
        phase = Phase(broker_pid)
        time.sleep(CONSUMER_WINDOW_S)
        after = [scrape(port) for port in ports]
        timing = phase.end()
        sent = (publisher.sent - sent_before) if publisher else 0
        if publisher is not None:
            publisher.stop()
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    wall = timing["wall_s"]
    rates = [(a["messages"] - b["messages"]) / wall for a, b in zip(after, before, strict=True)]
    cpu = [(a["cpu_s"] - b["cpu_s"]) for a, b in zip(after, before, strict=True)]
    per_thousand = [1000 * c / max(r * wall, 1) for c, r in zip(cpu, rates, strict=True)]
    offered = sent / wall if flood else devices * 5 / TELEMETRY_PERIOD_S
    return {"instances": instances, "flood": flood, "offered_per_s": round(offered, 1),
            "ingested_per_s_per_instance": [round(r, 1) for r in rates],
            "ingested_per_s_total": round(sum(rates), 1),
            "consumer_cpu_percent": [round(100 * c / wall, 1) for c in cpu],
            "cpu_s_per_1000_messages": [round(p, 3) for p in per_thousand],
            "mosquitto_cpu_percent": timing["mosquitto_cpu_percent"]}


def bench(devices: int) -> dict[str, Any]:
    result: dict[str, Any] = {"devices": devices}
    with EmbeddedBroker(Path("/usr/sbin/mosquitto")) as broker, tempfile.TemporaryDirectory() as tmp:
        pid = broker.pid
        work = Path(tmp)
        phase = Phase(pid)
        sim = subprocess.Popen(cli("fleet", "simulate", "--broker", broker.url, "-n", str(devices), "--group",
                                   "bench", "--period", f"{TELEMETRY_PERIOD_S}s", "--slow-deploy", f"{SIM_DEPLOY_S}s",
                                   "--probation", f"{SIM_PROBATION_S}s"),
                               stdout=subprocess.DEVNULL, stderr=(work / "sim.log").open("wb"))
        try:
            asyncio.run(wait_online(broker.url, devices))
            result["connect"] = phase.end()
            result["rollout"] = run_rollout(broker.url, devices, work, pid)
            result["consumers"] = [run_consumers(broker.url, n, pid, devices) for n in (1, 2)]
            result["consumers_flooded"] = [run_consumers(broker.url, n, pid, devices, flood=True) for n in (1, 2)]
            result["simulator_cpu_s"] = round(cpu_seconds(sim.pid), 1)
        finally:
            sim.terminate()
            try:
                sim.wait(SIM_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.fleet.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, action="append", help="fleet size; repeat for several")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    for devices in args.devices or [500]:
        print(f"--- {devices} devices", flush=True)
        result = bench(devices)
        print(json.dumps(result, indent=1), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
