"""The fleet's telemetry consumer: scales out with MQTT 5 shared subscriptions.

Subscriptions of one instance:
- ``$share/<group>/<prefix>/+/telemetry/#`` and ``$share/<group>/<prefix>/+/events``:
  the broker hands each message to one instance of the share group, so N
  instances split the load (without a group: plain subscriptions, one instance
  sees everything);
- ``$share/<group>/<prefix>/+/results/+``: the cameras' results, always at QoS 0 (the agent
  sends them now or never) and kept out of gap tracking; read tolerantly (agent.fleet.results);
- ``<prefix>/+/status|model|deployment|counts/+``, not shared: retained state is small,
  every instance needs all of it, and shared subscriptions get no retained
  messages on subscribe (MQTT 5, 4.8.2);
- ``<prefix>/+/snapshots/+``, not shared: the cameras' event pictures (JPEGs, when a camera's
  snapshots go over MQTT; few), of which every instance's dashboard shows the latest;
- ``<prefix>/_consumers/<group>/+``: the instances' digests of the sequence
  numbers they saw, so that gaps are found across the group (agent.fleet.seqtrack).
  Only that exact topic carries digests (a device's own tree never does: a device
  that publishes ``<prefix>/<id>/telemetry/_consumers/...`` publishes an unknown
  telemetry kind), members are bounded (``seqtrack.MAX_MEMBERS``), and messages
  of kinds outside the contract are counted and dropped before they reach any table.

Every message goes to the ``FleetView``, the Prometheus families, the
TensorBoard writer and the dashboard history; ``observer`` (if given) sees each
parsed telemetry and event message once, as it arrives.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.fleet.control import ControlClient, ControlError
from agent.fleet.link import RETAINED_SUFFIXES, SUBSCRIBE_QOS
from agent.fleet.metrics import DEFAULT_MAX_DEVICES
from agent.fleet.seqtrack import Digest, Membership, SeqTracker
from agent.fleet.sinks import FleetMetrics, History, TensorBoardSink
from agent.fleet.view import FleetView, Message, in_contract, split_topic
from agent.mqtt import Batch, FastSubscriber, MqttFastError, tls_context
from agent.wire import SignalState, check_segment

__all__ = ["CONSUMERS_SEGMENT", "DIGEST_PERIOD_S", "Consumer", "ConsumerOptions"]

log = structlog.get_logger(__name__)

SHARED_SUFFIXES = ("telemetry/#", "events")
RESULTS_SUFFIX = "results/+"
"""Shared like telemetry, always read at QoS 0: the agent sends results at QoS 0, now or never, and
they stay out of gap tracking (their drops are by design, counted in the device's health)."""
COUNTS_SUFFIX = "counts/+"
"""Retained per camera; read with the other retained state by every instance."""
RESULTS_QOS = 0
SNAPSHOTS_SUFFIX = "snapshots/+"
"""Not shared: each instance keeps every camera's latest picture for its dashboard."""
CONSUMERS_SEGMENT = "_consumers"
"""The reserved topic level of the consumers' digests (a device id never takes it)."""
DIGEST_PERIOD_S = 1.0
"""How often an instance tells its peers what it saw, checks for gaps and flushes TensorBoard."""
STATS_PERIOD_S = 30.0
"""How often an instance logs what it ingested."""
QOS = 1
"""Default QoS of the shared subscriptions. At QoS 1 a broker bounds what it queues for a slow
consumer (mosquitto: 1000 messages) and drops the rest, which the gap metric shows; at QoS 0 it
buffers without that bound (memory on the broker) and nothing is dropped while connected. The
retained state is always read at QoS 0 (agent.fleet.link.SUBSCRIBE_QOS)."""


@dataclass(frozen=True)
class ConsumerOptions:
    share_group: str | None = None
    max_devices: int = DEFAULT_MAX_DEVICES
    tensorboard: Path | None = None
    instance_id: str = ""
    qos: int = QOS
    """Of the shared telemetry and events subscriptions (see ``QOS``)."""

    def __post_init__(self) -> None:
        if self.qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {self.qos}")
        if self.share_group is not None:
            check_segment(self.share_group, "share group")
        if not self.instance_id:
            object.__setattr__(self, "instance_id", uuid.uuid4().hex[:8])
        check_segment(self.instance_id, "instance id")


def fast_subscriber(control: ControlClient, on_batch: Callable[[Batch], None]) -> FastSubscriber:
    """A ``FastSubscriber`` on the control client's broker, with its credentials and TLS."""
    return FastSubscriber(control.address.host, control.address.port, control.client_id, on_batch,
                          username=control.username, password=control.password,
                          tls=tls_context(control.address.url.startswith("mqtts")))


async def run_until_first(*work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` until one of them ends; its exception propagates, the others are cancelled."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _tracked(suffix: str) -> bool:
    return suffix.startswith("telemetry/") or suffix == "events"


class Consumer:
    def __init__(self, control: ControlClient, options: ConsumerOptions | None = None,
                 observer: Callable[[Message], None] | None = None) -> None:
        self.control = control
        self.options = options = options or ConsumerOptions()
        self.instance_id = options.instance_id
        self.view = FleetView(control.prefix)
        self.metrics = FleetMetrics(options.max_devices)
        self.lock: threading.Lock = self.metrics.registry.lock
        """Held while the view, metrics and history change; the HTTP server reads under it."""
        self.history = History()
        self.tracker = SeqTracker()
        self.members = Membership(self.instance_id)
        self.digest = Digest(self.instance_id)
        self.tensorboard = (TensorBoardSink(options.tensorboard, self.instance_id, self.metrics.devices)
                            if options.tensorboard else None)
        self.observer = observer
        self.ingested = 0
        self.subscribed = asyncio.Event()
        group = options.share_group
        self._digest_root = f"{control.prefix}/{CONSUMERS_SEGMENT}/{group}/" if group else None
        self._digest_topic = f"{self._digest_root}{self.instance_id}" if self._digest_root else None

    def state_filters(self) -> list[str]:
        return [f"{self.control.prefix}/+/{s}" for s in (*RETAINED_SUFFIXES, COUNTS_SUFFIX)]

    def filters(self) -> list[str]:
        prefix, group = self.control.prefix, self.options.share_group
        shared = [f"$share/{group}/{prefix}/+/{s}" if group else f"{prefix}/+/{s}"
                  for s in (*SHARED_SUFFIXES, RESULTS_SUFFIX)]
        peers = [f"{prefix}/{CONSUMERS_SEGMENT}/{group}/+"] if group else []
        return shared + self.state_filters() + [f"{prefix}/+/{SNAPSHOTS_SUFFIX}"] + peers

    def qos_of(self, topic_filter: str) -> int:
        if topic_filter in self.state_filters():
            return SUBSCRIBE_QOS
        return RESULTS_QOS if topic_filter.endswith("/" + RESULTS_SUFFIX) else self.options.qos

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; raises ControlError when the broker cannot be reached."""
        control = self.control
        client = fast_subscriber(control, self.handle_batch)
        try:
            await client.connect()
            await client.subscribe([(f, self.qos_of(f)) for f in self.filters()])
            self.subscribed.set()
            log.info("consumer_started", instance=self.instance_id, share_group=self.options.share_group,
                     filters=self.filters())
            await run_until_first(client.run(), self._tick(client), stop.wait())
        except MqttFastError as exc:
            raise ControlError(f"broker {control.address.url}: {exc}") from exc
        finally:
            client.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            log.info("consumer_stopped", instance=self.instance_id, ingested=self.ingested)

    def handle_batch(self, batch: Batch) -> None:
        """The messages of one read of the socket, handled under one taking of the lock."""
        with self.lock:
            for topic, data in batch:
                self._handle(topic, data)

    def handle(self, topic: str, data: bytes) -> None:
        """One message from the broker (public for the tests and the benchmark's in-process measurements)."""
        with self.lock:
            self._handle(topic, data)

    def _handle(self, topic: str, data: bytes) -> None:
        """Called with the lock held."""
        if self._digest_root is not None and topic.startswith(self._digest_root):
            self._merge_digest(topic.removeprefix(self._digest_root), data)
            return
        where = split_topic(self.control.prefix, topic)
        if where is None:
            self.metrics.rejected.inc(())
            return
        device, suffix = where
        if not in_contract(suffix):
            self.metrics.unknown_kinds.inc(())
            return
        message = self.view.parse_at(device, suffix, data)
        if message is None:
            self.metrics.rejected.inc(())
            return
        self.ingested += 1
        self.view.update(message)
        self.metrics.observe(message, self.view)
        self.history.add(message)
        if message.data is None or not _tracked(suffix):
            return
        seq = message.seq
        if seq is not None:
            self.tracker.see(device, suffix, seq)
            if self._digest_topic is not None:
                self.digest.add(device, suffix, seq)
        if self.tensorboard is not None:
            self.tensorboard.write(message)
        if self.observer is not None:
            self.observer(message)

    def _merge_digest(self, sender: str, data: bytes) -> None:
        """A digest on ``<prefix>/_consumers/<group>/<sender>``: the payload must name its sender."""
        try:
            instance, items = Digest.parse(data)
        except ValueError as exc:
            self._refuse_digest("consumer_digest_unreadable", sender, str(exc))
            return
        if instance != sender or "/" in sender:
            self._refuse_digest("consumer_digest_misnamed", sender, f"names instance {instance[:64]!r}")
            return
        if instance == self.instance_id:
            return
        if not self.members.heard(instance):
            self._refuse_digest("consumer_digest_group_full", sender, f"{self.members.max_members} members")
            return
        for device, suffix, seq in items:
            if _tracked(suffix) and in_contract(suffix):
                self.tracker.see(device, suffix, seq)

    def _refuse_digest(self, event: str, sender: str, error: str) -> None:
        self.metrics.digests_refused.inc(())
        log.warning(event, sender=sender[:64], error=error)

    async def _tick(self, client: FastSubscriber) -> None:
        loop = asyncio.get_running_loop()
        last_stats, last_count = loop.time(), 0
        while True:
            await asyncio.sleep(DIGEST_PERIOD_S)
            if self._digest_topic is not None:
                with self.lock:
                    digest = self.digest.flush()
                client.publish(self._digest_topic, digest, qos=QOS)
            self.check_gaps()
            if self.tensorboard is not None:
                self.tensorboard.flush()
            if loop.time() - last_stats >= STATS_PERIOD_S:
                rate = (self.ingested - last_count) / (loop.time() - last_stats)
                log.info("consumer_stats", instance=self.instance_id, ingested=self.ingested,
                         per_second=round(rate, 1), devices=len(self.view.devices),
                         members=len(self.members.members()))
                last_stats, last_count = loop.time(), self.ingested

    def check_gaps(self) -> None:
        gaps = self.tracker.check()
        with self.lock:
            for gap in gaps:
                if self.members.owns(gap.device_id):
                    self.metrics.gap(gap)
                    log.warning("seq_gap", device=gap.device_id, topic=gap.suffix, first=gap.first,
                                last=gap.last, missing=gap.missing)
            self.metrics.housekeeping(self.tracker.duplicates, self.tracker.restarts, len(self.members.members()))

    def picture(self, device_id: str, camera: str) -> bytes | None:
        """The latest JPEG of the device's camera on ``snapshots/<camera>``; None when none came."""
        with self.lock:
            view = self.view.devices.get(device_id)
            seen = None if view is None else view.snapshots.get(camera)
        return None if seen is None else seen[1].jpeg

    def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows, as JSON-ready data (taken under the lock)."""
        with self.lock:
            devices = [{
                "id": d.device_id, "status": d.status, "groups": list(d.groups), "model": d.model,
                "version": d.version, "fps": d.fps, "latency_p95_ms": d.latency_p95_ms,
                "cameras": [{"name": name, "state": state, "fps": fps} for name, state, fps in d.cameras],
                "signals": {s: d.signals.get(s) for s in ("drift", "bias", "leak")},
                "drift_psi": d.drift_score, "last_seen": d.last_seen,
                "deployment": None if d.deployment is None else {
                    "id": d.deployment.deployment_id, "version": d.deployment.version,
                    "state": d.deployment.state, "agreement": d.shadow_agreement},
                "series": self.history.of(d.device_id),
                "counts": {camera: zones for camera, zones in sorted(d.counts.items())},
                "object_events": [{"ts": e.ts, "kind": e.kind, "camera": e.camera, "label": e.label,
                                   "track_id": e.track_id, "zone": e.place, "message": e.message}
                                  for e in reversed(d.object_events)],
                "snapshots": [{"camera": camera, "n": n, "bytes": len(picture.jpeg)}
                              for camera, (n, picture) in sorted(d.snapshots.items())],
            } for d in self.view.in_group(None)]
            active = [{"device": d.device_id, "signal": signal, "state": state, "ts": d.last_seen}
                      for d in self.view.in_group(None) for signal, state in sorted(d.signals.items())
                      if state == SignalState.ALARM]
            alarms = [{"device": a.device_id, "ts": a.ts, "kind": a.kind, "severity": a.severity,
                       "message": a.message} for a in reversed(self.view.alarms)]
        return {"instance": self.instance_id, "share_group": self.options.share_group,
                "ingested": self.ingested, "devices": devices, "active": active, "alarms": alarms}

