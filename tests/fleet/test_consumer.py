"""The telemetry consumer on a real mosquitto: shared subscriptions, Prometheus over HTTP, TensorBoard, gaps."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.fleet.consumer import Consumer, ConsumerOptions
from agent.fleet.control import ControlClient
from agent.fleet.seqtrack import MAX_MEMBERS, Membership
from agent.fleet.view import Message
from agent.wire import LatencyPayload, StageLatency, encode_payload
from tests.fleet.test_tensorboard import read_scalars
from tests.support.fleetproc import start, stop, wait_started
from tests.support.mosquitto import WAIT_S, Mosquitto, MqttProbe, free_port, poll, poll_async

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


@contextmanager
def watching(mosquitto: Mosquitto, log: Path, *options: str) -> Iterator[int]:
    """``edge-agent fleet watch`` with /metrics on a free port (yielded), subscribed; stopped after."""
    port = free_port()
    watch = start("fleet", "watch", "--broker", mosquitto.url, "--prometheus-port", str(port), *options, log=log)
    try:
        wait_started(watch, log)
        yield port
    finally:
        stop(watch)


def latency_payload(seq: int, device: str = "gap-dev") -> bytes:
    stage = StageLatency(p50_ms=10.0, p95_ms=12.0, p99_ms=13.0, max_ms=20.0, count=10)
    return encode_payload(LatencyPayload(device_id=device, ts=1_800_000_000.0 + seq, seq=seq, window_frames=10,
                                         fps=15.0, frames_processed=seq * 10, frames_dropped=0,
                                         stages={"end_to_end": stage}))


def test_a_sequence_gap_is_a_metric_and_a_log_line(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    log = tmp_path / "watch.log"
    with watching(mosquitto, log) as port:
        probe = mqtt_probe(mosquitto.port, [])
        for seq in (1, 2, 3, 6, 7):
            probe.publish("edge/gap-dev/telemetry/latency", latency_payload(seq))
        poll(lambda: metric(scrape(port), "edge_fleet_seq_missing_messages_total", device="gap-dev") is not None,
             what="the gap to be reported")
        text = scrape(port)
    assert metric(text, "edge_fleet_seq_gaps_total", device="gap-dev", topic="telemetry/latency") == 1
    assert metric(text, "edge_fleet_seq_missing_messages_total", device="gap-dev", topic="telemetry/latency") == 2
    lines = [line for line in log.read_text().splitlines() if "seq_gap" in line]
    assert len(lines) == 1 and '"first": 4' in lines[0] and '"last": 5' in lines[0]


FAKE_MEMBERS = 50
SHARED = ("--share-group", "workers", "--instance-id", "real")


def digest(instance: str) -> bytes:
    return json.dumps({"instance": instance, "seen": {}}).encode()


def device_owned_by_a_fake(real: str, fakes: list[str]) -> str:
    """A device id whose gaps a consumer would leave to one of ``fakes`` if it took them as members."""
    members = Membership(real)
    for fake in fakes:
        members.heard(fake)
    return next(d for d in (f"gap-{n}" for n in range(1000)) if not members.owns(d))


def test_digests_published_under_a_device_tree_add_no_member_and_hide_no_gap(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    fakes = [f"fake-{n}" for n in range(FAKE_MEMBERS)]
    device = device_owned_by_a_fake("real", fakes)
    with watching(mosquitto, tmp_path / "watch.log", *SHARED) as port:
        probe = mqtt_probe(mosquitto.port, [])

        def pretend() -> None:
            for fake in fakes:
                probe.publish(f"edge/evil/telemetry/_consumers/workers/{fake}", digest(fake))

        pretend()
        for seq in (1, 2, 3, 6, 7):
            probe.publish(f"edge/{device}/telemetry/latency", latency_payload(seq, device))

        def reported() -> bool:
            pretend()
            return metric(scrape(port), "edge_fleet_seq_gaps_total", device=device) is not None

        poll(reported, what="the gap to be reported")
        text = scrape(port)
    assert metric(text, "edge_fleet_seq_missing_messages_total", device=device, topic="telemetry/latency") == 2
    assert metric(text, "edge_fleet_consumer_members") == 1
    assert (metric(text, "edge_fleet_unknown_kind_messages_total") or 0) >= FAKE_MEMBERS
    assert metric(text, "edge_fleet_messages_total", kind="other") is None


def test_the_share_group_counts_at_most_max_members_and_refuses_the_rest(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    log = tmp_path / "watch.log"
    extra = 10
    with watching(mosquitto, log, *SHARED) as port:
        probe = mqtt_probe(mosquitto.port, [])
        for n in range(MAX_MEMBERS + extra):
            probe.publish(f"edge/_consumers/workers/peer-{n}", digest(f"peer-{n}"))
        probe.publish("edge/_consumers/workers/liar", digest("peer-0"))
        # Room for MAX_MEMBERS - 1 peers beside this instance; the liar's digest names another instance.
        refused = (MAX_MEMBERS + extra) - (MAX_MEMBERS - 1) + 1
        poll(lambda: metric(scrape(port), "edge_fleet_consumer_digests_refused_total") == refused,
             what="the digests past the bound refused")
        poll(lambda: metric(scrape(port), "edge_fleet_consumer_members") == MAX_MEMBERS, what="the members counted")
    assert "consumer_digest_group_full" in log.read_text() and "consumer_digest_misnamed" in log.read_text()


def test_telemetry_of_unknown_kinds_is_counted_and_dropped_before_any_table(
        mosquitto: Mosquitto, mqtt_probe: Callable[..., MqttProbe], tmp_path: Path) -> None:
    kinds = 200
    payload = json.dumps({"device_id": "noisy", "ts": 1_800_000_000.0, "seq": 1, "state": "alarm"}).encode()
    consumer = Consumer(ControlClient(mosquitto.url), ConsumerOptions(share_group="workers", instance_id="local"))
    for n in range(kinds):
        consumer.handle(f"edge/noisy/telemetry/kind-{n}", payload)
    consumer.handle("edge/noisy/telemetry/drift", payload)
    assert list(consumer.tracker.streams) == [("noisy", "telemetry/drift")]
    assert consumer.digest.flush() == b'{"instance":"local","seen":{"noisy":{"telemetry/drift":[1]}}}'
    assert consumer.metrics.unknown_kinds.samples == {(): ((), kinds)}

    with watching(mosquitto, tmp_path / "watch.log") as port:
        probe = mqtt_probe(mosquitto.port, [])
        for n in range(kinds):
            probe.publish(f"edge/noisy/telemetry/kind-{n}", payload)
        poll(lambda: metric(scrape(port), "edge_fleet_unknown_kind_messages_total") == kinds,
             what="every unknown kind counted")
        text = scrape(port)
    assert metric(text, "edge_fleet_messages_total", kind="other") is None
    assert 'device="noisy"' not in text
