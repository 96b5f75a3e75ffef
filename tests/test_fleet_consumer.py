"""The telemetry consumer on a real mosquitto: shared subscriptions, Prometheus over HTTP, TensorBoard, gaps."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from agent.fleet.consumer import Consumer, ConsumerOptions
from agent.fleet.control import ControlClient
from agent.fleet.view import Message
from agent.mqtt.schema import LatencyPayload, StageLatency, encode_payload
from tests.fleetproc import start, stop
from tests.mosquitto import WAIT_S, Mosquitto, MqttProbe, free_port, poll, poll_async
from tests.test_fleet_tensorboard import read_scalars

MESSAGES_PER_STREAM = 8


def seq_of(message: Message) -> int:
    data = message.data
    return int(data["seq"] if isinstance(data, dict) else data.seq)


def test_two_consumers_share_the_load_without_duplicates_or_gaps(mosquitto: Mosquitto, tmp_path: Path) -> None:
    seen: dict[str, list[tuple[str, str, int]]] = {"a": [], "b": []}

    def observer(name: str) -> Callable[[Message], None]:
        return lambda m: seen[name].append((m.device_id, m.suffix, seq_of(m)))

    consumers = [Consumer(ControlClient(mosquitto.url), ConsumerOptions(share_group="workers", instance_id=name),
                          observer=observer(name)) for name in seen]

    def streams() -> dict[tuple[str, str], list[int]]:
        found: dict[tuple[str, str], list[int]] = defaultdict(list)
        for device, suffix, seq in seen["a"] + seen["b"]:
            found[(device, suffix)].append(seq)
        return found

    async def scenario() -> None:
        stop_consumers = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop_consumers)) for c in consumers]
        await poll_async(lambda: all(c.subscribed.is_set() for c in consumers), what="consumers subscribed")
        sim = start("fleet", "simulate", "--broker", mosquitto.url, "-n", "6", "--period", "0.2s",
                    "--alarm-rate", "0.5", log=tmp_path / "sim.log")
        try:
            await poll_async(lambda: len(streams()) >= 6 * 5 and all(
                len(s) >= MESSAGES_PER_STREAM for k, s in streams().items() if k[1] != "events"),
                timeout=WAIT_S * 2, what="telemetry of every device")
        finally:
            await asyncio.to_thread(stop, sim)
        await poll_async(lambda: all(c.members.members() == ["a", "b"] for c in consumers), what="peers heard")
        await poll_async(lambda: all(s.floor is not None and not s.pending
                                     for c in consumers for s in c.tracker.streams.values()),
                         what="every stream settled in both consumers")
        for consumer in consumers:
            consumer.check_gaps()
        stop_consumers.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    everything = seen["a"] + seen["b"]
    assert Counter(everything).most_common(1)[0][1] == 1, "a message reached both consumers"
    for (device, suffix), seqs in streams().items():
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"{device} {suffix}: missing numbers"
    assert seen["a"] and seen["b"], "the broker gave all messages to one consumer"
    assert {s for _, s, _ in seen["a"]} >= {"telemetry/latency", "telemetry/health", "telemetry/drift"}
    for consumer in consumers:
        assert consumer.metrics.gaps.samples == {}
        assert consumer.tracker.duplicates == 0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_watch_exports_prometheus_over_http_and_tensorboard_files(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    board = tmp_path / "board"
    watch = start("fleet", "watch", "--broker", mosquitto.url, "--prometheus-port", str(port), "--tensorboard",
                  str(board), "--max-devices", "3", log=tmp_path / "watch.log")
    sim = None
    try:
        poll(lambda: "listening on" in (tmp_path / "watch.log").read_text(), what="the consumer's HTTP port")
        sim = start("fleet", "simulate", "--broker", mosquitto.url, "-n", "5", "--period", "0.3s",
                    log=tmp_path / "sim.log")
        poll(lambda: (metric(scrape(port), "edge_fleet_messages_total", kind="telemetry/latency") or 0) >= 20,
             timeout=WAIT_S * 2, what="latency telemetry ingested")
        text = scrape(port)
    finally:
        if sim is not None:
            stop(sim)
        stop(watch)
    assert "# TYPE edge_fleet_device_latency_ms gauge" in text
    named = set(re.findall(r'device="([^"]+)"', text)) - {"_overflow"}
    assert len(named) == 3 and named < {f"sim-{i:04d}" for i in range(5)}
    assert '_overflow' in text
    device = sorted(named)[0]
    assert metric(text, "edge_fleet_device_fps", device=device, model="text-det", version="1.0.0") is not None
    p95 = metric(text, "edge_fleet_device_latency_ms", device=device, stage="end_to_end", quantile="0.95")
    assert p95 is not None and p95 > 0
    assert metric(text, "edge_fleet_label_overflow_devices") == 2
    assert metric(text, "edge_fleet_devices", state="online") == 5

    assert {p.name for p in board.iterdir()} == named
    files = list((board / device).glob("events.out.tfevents.*"))
    assert len(files) == 1
    version, scalars = read_scalars(files[0])
    assert version == "brain.Event:2"
    tags = {tag for tag, _, _ in scalars}
    assert {"fps", "latency/end_to_end_p95_ms", "drift/score", "health/cpu_percent"} <= tags
    steps = [step for tag, step, _ in scalars if tag == "fps"]
    assert steps == sorted(steps) and len(steps) >= 3
    assert all(value > 0 for tag, _, value in scalars if tag == "latency/end_to_end_p95_ms")


def latency_payload(seq: int) -> bytes:
    stage = StageLatency(p50_ms=10.0, p95_ms=12.0, p99_ms=13.0, max_ms=20.0, count=10)
    return encode_payload(LatencyPayload(device_id="gap-dev", ts=1_800_000_000.0 + seq, seq=seq, window_frames=10,
                                         fps=15.0, frames_processed=seq * 10, frames_dropped=0,
                                         stages={"end_to_end": stage}))


def test_a_sequence_gap_is_a_metric_and_a_log_line(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "watch.log"
    watch = start("fleet", "watch", "--broker", mosquitto.url, "--prometheus-port", str(port), log=log)
    try:
        poll(lambda: "consumer_started" in log.read_text(), what="the consumer to subscribe")
        probe = mqtt_probe(mosquitto.port, [])
        for seq in (1, 2, 3, 6, 7):
            probe.publish("edge/gap-dev/telemetry/latency", latency_payload(seq))
        poll(lambda: metric(scrape(port), "edge_fleet_seq_missing_messages_total", device="gap-dev") is not None,
             what="the gap to be reported")
        text = scrape(port)
    finally:
        stop(watch)
    assert metric(text, "edge_fleet_seq_gaps_total", device="gap-dev", topic="telemetry/latency") == 1
    assert metric(text, "edge_fleet_seq_missing_messages_total", device="gap-dev", topic="telemetry/latency") == 2
    lines = [line for line in log.read_text().splitlines() if "seq_gap" in line]
    assert len(lines) == 1 and '"first": 4' in lines[0] and '"last": 5' in lines[0]
