"""Fleet benchmark: simulated devices on one mosquitto, a staged rollout, one and two consumers.

    python -m agent.cli.bench_fleet --devices 500 [--devices 1000 ...] [--json results.json]

For each fleet size it starts its own mosquitto on a free port, the simulator
(``edge-agent fleet simulate --transport fast``, one process per 1000 devices, one MQTT
connection per device),
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

import asyncio
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent.dev.base import DevError
from agent.fleet import Consumer, ConsumerOptions, ControlClient, FleetLink
from agent.mqtt import EmbeddedBroker, free_port, pack_connect, pack_publish, parse_broker_url
from agent.sim import SimDevice, SimSpec, device_ids
from agent.wire import DeploymentState, DeviceState

__all__ = ["FLOOD_RATE", "bench_consumers", "bench_fleet", "profile_consumer"]

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
SIM_TRANSPORT = "fast"
"""The simulated devices' connection: agent.sim.fastsession, about a third of the agent's own session's CPU
per telemetry message (docs/fleet.md), so that 10k devices at the default period fit beside the broker."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FLOOD_DEVICES = 200
"""Devices the flood publisher speaks for (5 telemetry kinds each, every one with its own seq)."""
FLOOD_CHUNK = 250
"""PUBLISH packets per socket write of the flood publisher."""
FLOOD_RATE = 25000.0
"""Messages/s offered per consumer instance: above the 20k/s an instance must take, so that what it
ingests is its ceiling, and bounded, so that the publisher leaves the consumers their share of the cores."""
FD_HEADROOM = 256
"""Open files of mosquitto beyond one socket per device (consumers, the rollout, its own)."""
PROFILE_LINES = 20
LOG_TAIL_CHARS = 2000
"""What the results keep of the log of a consumer that ingested nothing."""
REST_PREFIX = "rest"
"""Topic prefix of the devices outside the rollout group: ``fleet deploy`` reads every device's drift,
bias and leak telemetry under its prefix (agent.fleet.link), which for 9000 more devices would be
5400 messages/s through its aiomqtt client; under their own prefix they load the same broker."""


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


async def wait_online(url: str, devices: int, prefix: str = "edge") -> None:
    async with FleetLink(ControlClient(url, prefix), ("status",)) as link:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while sum(d.status == DeviceState.ONLINE for d in link.view.devices.values()) < devices:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{devices} devices not online within {CONNECT_TIMEOUT_S:.0f}s")
            await link.wait_changed(POLL_S)


async def committed_at(url: str, rollout_id: str) -> dict[str, float]:
    async with FleetLink(ControlClient(url), ("deployment",)) as link:
        return {d.device_id: d.deployment.updated for d in link.view.devices.values()
                if d.deployment is not None and d.deployment.deployment_id.startswith(rollout_id)
                and d.deployment.state == DeploymentState.COMMITTED}


def run_rollout(url: str, devices: int, work: Path, broker_pid: int) -> dict[str, Any]:
    artifact = work / "model.bin"
    artifact.write_bytes(b"benchmark artifact")  # simulated devices download nothing: sent as a bundle by --format
    rollout_id = f"bench-{devices}"
    phase = Phase(broker_pid)
    done = subprocess.run(cli("fleet", "deploy", "--broker", url, "--group", "bench", "--name", "text-det",
                              "--version", "2.0.0", "--url", artifact.as_uri(), "--format", "bundle", "--canary", "5%",
                              "--waves", "25%,50%,100%", "--wait-healthy", "0s", "--rollout-id", rollout_id,
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


SCRAPE_TIMEOUT_S = 60.0
"""A consumer busy with 9000 devices' telemetry on a loaded machine answered /metrics in over 10 s."""


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
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


def flood_templates(devices: int) -> list[tuple[str, bytes, bytes]]:
    """``(topic, head, tail)`` per device and telemetry kind: ``head + str(seq) + tail`` is the payload a
    simulated device sends (agent.sim.telemetry: the real builders, 200 to 600 bytes)."""
    spec = SimSpec(url="mqtt://127.0.0.1:1883", devices=devices, id_prefix="flood", alarm_rate=0.05)
    recorder = _Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        for device_id in device_ids(spec):
            device = SimDevice(spec, device_id, Path(tmp))
            device.attach(recorder)
            asyncio.run(device.publish_telemetry())
    templates = []
    for topic, payload in recorder.published:
        match = re.search(rb'"seq": ?1,', payload)
        if match is not None and "/telemetry/" in topic:
            templates.append((topic, payload[:match.end() - 2], payload[match.end() - 1:]))
    return templates


class _Recorder:
    """Takes the place of a device's MQTT session to record what it publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, bytes(payload)))


def _flood(url: str, rate: float, sent: Any, stop: Any) -> None:
    """The flood publisher's process: QoS 1 over one raw MQTT 3.1.1 socket, ``rate`` messages/s at most."""
    address = parse_broker_url(url)
    templates = flood_templates(FLOOD_DEVICES)
    sock = socket.create_connection((address.host, address.port))
    sock.sendall(pack_connect(f"bench-flood-{os.getpid()}", version=4, receive_maximum=None))
    threading.Thread(target=_drain, args=(sock,), daemon=True).start()
    started, count, seq, packet_id = time.monotonic(), 0, 0, 0
    while not stop.is_set():
        seq += 1
        for start in range(0, len(templates), FLOOD_CHUNK):
            chunk = []
            for topic, head, tail in templates[start:start + FLOOD_CHUNK]:
                packet_id = packet_id % 0xFFFF + 1
                chunk.append(pack_publish(topic, b"%s%d%s" % (head, seq, tail), 1, packet_id, version=4))
            sock.sendall(b"".join(chunk))
            count += len(chunk)
            sent.value = count
            ahead = count / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    sock.close()


def _drain(sock: socket.socket) -> None:
    """Reads and drops the broker's CONNACK and PUBACKs, so that its send buffer never fills."""
    with contextlib.suppress(OSError):
        while sock.recv(1 << 16):
            pass


class Flood:
    """Real telemetry payloads of ``FLOOD_DEVICES`` devices from another process, at up to ``rate``/s."""

    def __init__(self, url: str, rate: float) -> None:
        context = multiprocessing.get_context("fork")
        self._sent = context.Value("q", 0)
        self._stop = context.Event()
        self._process = context.Process(target=_flood, args=(url, rate, self._sent, self._stop), daemon=True)

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._stop.set()
        self._process.join(SIM_STOP_TIMEOUT_S)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()


def run_consumers(url: str, instances: int, broker_pid: int, offered: float,
                  flood_rate: float | None = None, prefix: str = "edge") -> dict[str, Any]:
    """``instances`` of ``fleet watch`` in one share group: what each ingested over ``CONSUMER_WINDOW_S``;
    ``flood_rate``: a flood publisher offers that many messages/s beside whatever else publishes."""
    with contextlib.ExitStack() as stack:
        ports = [free_port() for _ in range(instances)]
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in ports]
        processes = [subprocess.Popen(cli("fleet", "watch", "--broker", url, "--prefix", prefix,
                                          "--share-group", "bench", "--prometheus-port", str(port),
                                          "--log-level", "info"),
                                      stdout=log, stderr=subprocess.STDOUT)
                     for port, log in zip(ports, logs, strict=True)]
        publisher = Flood(url, flood_rate) if flood_rate else None
        try:
            for port in ports:
                wait_http(port)
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
        finally:
            if publisher is not None:
                publisher.stop()
            for process in processes:
                process.terminate()
                process.wait()
        wall = timing["wall_s"]
        rates = [(a["messages"] - b["messages"]) / wall for a, b in zip(after, before, strict=True)]
        tails = []
        for log, rate in zip(logs, rates, strict=True):
            if rate == 0:  # say why, rather than a silent 0
                log.seek(0)
                tails.append(log.read().decode(errors="replace")[-LOG_TAIL_CHARS:])
    cpu = [(a["cpu_s"] - b["cpu_s"]) for a, b in zip(after, before, strict=True)]
    per_thousand = [1000 * c / max(r * wall, 1) for c, r in zip(cpu, rates, strict=True)]
    return {"instances": instances, "flood": bool(flood_rate),
            "offered_per_s": round(sent / wall if publisher else offered, 1),
            "ingested_per_s_per_instance": [round(r, 1) for r in rates],
            "ingested_per_s_total": round(sum(rates), 1),
            "consumer_cpu_percent": [round(100 * c / wall, 1) for c in cpu],
            "cpu_s_per_1000_messages": [round(p, 3) for p in per_thousand],
            "mosquitto_cpu_percent": timing["mosquitto_cpu_percent"],
            **({"idle_consumer_log": tails} if tails else {})}


def raise_open_files(need: int) -> None:
    """Raise this process's soft open-files limit to the hard one: mosquitto, started from here, inherits
    it and needs one descriptor per connected device (the simulators raise their own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise DevError(f"{need} open files needed for mosquitto; the hard limit is {hard} (ulimit -Hn)")
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children still running (the simulator's shard processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


def bench_consumers(flood_rate: float) -> dict[str, Any]:
    """One then two consumers against a flood of ``flood_rate`` messages/s per instance, on their own broker."""
    with EmbeddedBroker(Path("/usr/sbin/mosquitto")) as broker:
        runs = [run_consumers(broker.url, n, broker.pid, 0.0, flood_rate * n) for n in (1, 2)]
    one, two = (r["ingested_per_s_total"] for r in runs)
    return {"flooded": runs, "two_over_one": round(two / one, 2) if one else None}


def start_simulator(url: str, devices: int, prefix: str, log: Path, transport: str = SIM_TRANSPORT,
                    ) -> subprocess.Popen[bytes]:
    """Device ids begin with ``prefix`` too: two simulators must not share MQTT client ids."""
    return subprocess.Popen(cli("fleet", "simulate", "--broker", url, "--prefix", prefix, "-n", str(devices),
                                "--group", "bench", "--id-prefix", prefix, "--transport", transport,
                                "--period", f"{TELEMETRY_PERIOD_S}s",
                                "--slow-deploy", f"{SIM_DEPLOY_S}s", "--probation", f"{SIM_PROBATION_S}s"),
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(SIM_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def bench_fleet(devices: int, rollout_devices: int, transport: str = SIM_TRANSPORT) -> dict[str, Any]:
    """``devices`` simulated devices on one mosquitto, ``rollout_devices`` of them in the group rolled out to,
    each simulated device on ``transport`` (``fleet simulate --transport``)."""
    result: dict[str, Any] = {"devices": devices, "rollout_devices": rollout_devices, "sim_transport": transport}
    raise_open_files(devices + FD_HEADROOM)
    with EmbeddedBroker(Path("/usr/sbin/mosquitto")) as broker, tempfile.TemporaryDirectory() as tmp:
        pid, work = broker.pid, Path(tmp)
        phase = Phase(pid)
        rest = devices - rollout_devices
        sims = [start_simulator(broker.url, rollout_devices, "edge", work / "sim-rollout.log", transport)]
        try:
            asyncio.run(wait_online(broker.url, rollout_devices))
            if rest:
                sims.append(start_simulator(broker.url, rest, REST_PREFIX, work / "sim-rest.log", transport))
                asyncio.run(wait_online(broker.url, rest, REST_PREFIX))
            result["connect"] = phase.end()
            phase = Phase(pid)
            cpu = sum(tree_cpu_seconds(sim.pid) for sim in sims)
            time.sleep(CONSUMER_WINDOW_S)
            steady = phase.end()
            steady["simulator_cpu_percent"] = round(
                100 * (sum(tree_cpu_seconds(sim.pid) for sim in sims) - cpu) / steady["wall_s"], 1)
            result["steady"] = steady
            result["consumer"] = run_consumers(broker.url, 1, pid, rest * 5 / TELEMETRY_PERIOD_S, prefix=REST_PREFIX)
            result["rollout"] = run_rollout(broker.url, rollout_devices, work, pid)
            result["simulator_cpu_s"] = round(sum(tree_cpu_seconds(sim.pid) for sim in sims), 1)
        finally:
            for sim in sims:
                stop_process(sim)
    return result


def profile_consumer(messages: int) -> str:
    """cProfile of ``Consumer.handle_batch`` over the flood's payloads (no broker): where a message's time goes."""
    templates = flood_templates(FLOOD_DEVICES)
    rounds = max(1, messages // len(templates))
    batches = [[(topic, b"%s%d%s" % (head, seq, tail)) for topic, head, tail in templates]
               for seq in range(1, rounds + 1)]
    def consumer() -> Consumer:
        return Consumer(ControlClient("mqtt://127.0.0.1:1"), ConsumerOptions(share_group="bench"))

    plain = consumer()
    started = time.perf_counter()
    for batch in batches:
        plain.handle_batch(batch)
    elapsed = time.perf_counter() - started
    profiled, profile = consumer(), cProfile.Profile()
    profile.enable()
    for batch in batches:
        profiled.handle_batch(batch)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(PROFILE_LINES)
    count = rounds * len(templates)
    return f"{count} messages, {1e6 * elapsed / count:.1f} us each (without the profiler)\n{out.getvalue()}"

