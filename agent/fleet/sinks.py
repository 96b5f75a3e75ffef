"""Where the consumer puts what it reads: Prometheus metrics, TensorBoard scalars, dashboard history.

Each sink takes parsed device messages (``view.Message``) one at a time; none
of them does network I/O.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

from agent.fleet.metrics import (
    DEFAULT_MAX_DEVICES,
    OTHER_VALUES,
    OVERFLOW,
    BoundedLabels,
    DeviceLabels,
    Registry,
    closed,
)
from agent.fleet.results import (
    CAMERA_TOPICS,
    OBJECT_EVENT_KINDS,
    CountsDigest,
    ResultsDigest,
    camera_topic,
    object_event,
)
from agent.fleet.seqtrack import Gap
from agent.fleet.tensorboard import EventFileWriter
from agent.fleet.view import SIGNALS, STATE_RANK, FleetView, Message, summarise
from agent.wire import DeviceState, EventPayload, HealthPayload, LatencyPayload, ModelPayload, StatusPayload

__all__ = ["FleetMetrics", "History", "TensorBoardSink"]

STAGES = ("capture_wait", "preprocess", "infer", "postprocess", "end_to_end")
QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))
TOPICS = ("telemetry/health", "telemetry/latency", *(f"telemetry/{s}" for s in SIGNALS), "events")
KINDS = ("status", "model", "deployment", "reply", *TOPICS, *CAMERA_TOPICS)
MAX_CAMERA_LABELS = 64
"""Camera names with their own series, fleet-wide (cameras are usually named alike on every device)."""
MAX_ZONE_LABELS = 256
"""Zone and line names with their own series, fleet-wide."""
MAX_OBJECT_LABELS = 256
"""Object labels with their own series, fleet-wide (a detector's classes: COCO has 80)."""
STATUS_STATES: tuple[str, ...] = tuple(DeviceState)
SEVERITIES = ("info", "warning", "alarm")
HISTORY_POINTS = 120
"""Points per device and series kept for the dashboard's charts."""
END_TO_END = "end_to_end"


class FleetMetrics:
    """The consumer's Prometheus families, fed one message at a time."""

    def __init__(self, max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        self.registry = r = Registry()
        self.devices = DeviceLabels(max_devices)
        self.messages = r.add("edge_fleet_messages_total", "counter", "Messages ingested, by topic kind", ("kind",))
        self.rejected = r.add("edge_fleet_rejected_messages_total", "counter",
                              "Messages that were not valid payloads of the contract")
        self.unknown_kinds = r.add("edge_fleet_unknown_kind_messages_total", "counter",
                                   "Device messages on a topic outside the contract (an unknown telemetry kind), "
                                   "dropped")
        self.digests_refused = r.add("edge_fleet_consumer_digests_refused_total", "counter",
                                     "Peer digests dropped: unreadable, naming another instance than their topic, "
                                     "or from a consumer past the member bound")
        self.up = r.add("edge_fleet_device_up", "gauge", "1 while the retained status is online", ("device",))
        self.by_state = r.add("edge_fleet_devices", "gauge", "Devices by retained status", ("state",))
        self.info = r.add("edge_fleet_device_model_info", "gauge", "The model a device serves (always 1)",
                          ("device",), ("model", "version"))
        self.fps = r.add("edge_fleet_device_fps", "gauge", "Frames processed per second",
                         ("device",), ("model", "version"))
        self.latency = r.add("edge_fleet_device_latency_ms", "gauge", "Latency percentile over the device's window",
                             ("device", "stage", "quantile"), ("model", "version"))
        self.frames = r.add("edge_fleet_device_frames_processed", "gauge", "Frames processed since the agent started",
                            ("device",))
        self.cpu = r.add("edge_fleet_device_cpu_percent", "gauge", "Agent process CPU, percent of one core",
                         ("device",))
        self.signal = r.add("edge_fleet_device_signal_state", "gauge", "Worst metric state: 0 ok, 1 warn, 2 alarm",
                            ("device", "signal"))
        self.psi = r.add("edge_fleet_device_drift_psi_max", "gauge", "Largest PSI in the latest drift telemetry",
                         ("device",), ("model", "version"))
        self.alarms = r.add("edge_fleet_alarm_events_total", "counter", "Events of severity warning or alarm",
                            ("device", "severity"))
        self.gaps = r.add("edge_fleet_seq_gaps_total", "counter", "Sequence gaps (lost messages) detected",
                          ("device", "topic"))
        self.missing = r.add("edge_fleet_seq_missing_messages_total", "counter", "Messages missing in those gaps",
                             ("device", "topic"))
        self.duplicates = r.add("edge_fleet_seq_duplicates_total", "counter", "Messages seen twice")
        self.restarts = r.add("edge_fleet_seq_restarts_total", "counter", "Streams that began again at 1")
        self.overflow = r.add("edge_fleet_label_overflow_devices", "gauge",
                              "Devices beyond the device label bound (counted under device=\"_overflow\")")
        self.members = r.add("edge_fleet_consumer_members", "gauge", "Consumers sharing the load, as heard")
        self.cameras = BoundedLabels(MAX_CAMERA_LABELS, what="cameras")
        self.zones = BoundedLabels(MAX_ZONE_LABELS, what="zones")
        self.labels = BoundedLabels(MAX_OBJECT_LABELS, what="labels")
        self.results = r.add("edge_fleet_results_total", "counter", "Results messages (frames) received",
                             ("device", "camera"))
        self.result_objects = r.add("edge_fleet_result_objects_total", "counter",
                                    "Objects in those results (boxes, text boxes, top-1 class), by label",
                                    ("device", "camera", "label"))
        self.object_events = r.add("edge_fleet_object_events_total", "counter",
                                   "Object, zone and line events; zone is the zone or line (empty: neither)",
                                   ("device", "camera", "zone", "label", "kind"))
        self.zone_objects = r.add("edge_fleet_zone_objects", "gauge",
                                  "Objects in a zone now, by label, from the retained counts",
                                  ("device", "camera", "zone", "label"))
        self.snapshots = r.add("edge_fleet_snapshots_total", "counter",
                               "Event pictures (JPEGs) received on snapshots/<camera>", ("device", "camera"))
        self.value_overflow = r.add("edge_fleet_label_overflow_values", "gauge",
                                    "Values beyond a label's bound, counted under \"_other\"", ("label",))
        self.cpu_seconds = r.add("process_cpu_seconds_total", "counter", "CPU time of this consumer process")

    def observe(self, message: Message, view: FleetView) -> None:
        """Called with the registry's lock held, after ``view`` has taken the message."""
        per_camera = camera_topic(message.suffix)
        self.messages.inc((closed(message.suffix if per_camera is None else per_camera[0], KINDS),))
        device = self.devices.label(message.device_id)
        data = message.data
        if isinstance(data, ResultsDigest):
            self._observe_results(device, data)
            return
        if per_camera is not None and per_camera[0] == "snapshots":
            if data is not None:
                self.snapshots.inc((device, self.cameras.label(per_camera[1])))
            return
        if per_camera is not None:
            self._observe_counts(device, per_camera[1], data if isinstance(data, CountsDigest) else None)
            return
        if isinstance(data, EventPayload):
            self._observe_object_event(device, data)
        if isinstance(data, EventPayload) and data.severity in SEVERITIES[1:]:
            self.alarms.inc((device, data.severity))
        if isinstance(data, StatusPayload):
            self._count_states(view)
        if device == OVERFLOW:
            self.overflow.set((), self.devices.overflowed)
            return
        state = view.device(message.device_id)
        model = (state.model or "", state.version or "")
        if isinstance(data, StatusPayload):
            self.up.set((device,), 1 if data.state == DeviceState.ONLINE else 0)
        elif isinstance(data, ModelPayload):
            self.info.set((device,), 1, model)
        elif isinstance(data, LatencyPayload):
            self.fps.set((device,), data.fps, model)
            for stage, stats in data.stages.items():
                if stage in STAGES:
                    for quantile, field in QUANTILES:
                        self.latency.set((device, stage, quantile), getattr(stats, field), model)
        elif isinstance(data, HealthPayload):
            self.frames.set((device,), data.frames_processed)
            self.cpu.set((device,), data.cpu_percent)
        elif isinstance(data, dict) and message.suffix.startswith("telemetry/"):
            kind = message.suffix.removeprefix("telemetry/")
            if kind in state.signals:
                self.signal.set((device, kind), STATE_RANK[state.signals[kind]])
            if kind == "drift" and state.drift_score is not None:
                self.psi.set((device,), state.drift_score, model)

    def _observe_results(self, device: str, data: ResultsDigest) -> None:
        camera = self.cameras.label(data.camera)
        self.results.inc((device, camera))
        for label, count in data.labels.items():
            self.result_objects.inc((device, camera, self.labels.label(label)), count)
        self._count_overflow()

    def _observe_counts(self, device: str, camera_name: str, data: CountsDigest | None) -> None:
        """The camera's gauges are replaced by its new counts; bounded-out values get no gauge."""
        camera = self.cameras.label(camera_name)
        if device == OVERFLOW or camera == OTHER_VALUES:
            self._count_overflow()
            return
        self.zone_objects.drop_prefix((device, camera))
        for zone_name, labels in (data.zones if data is not None else {}).items():
            zone = self.zones.label(zone_name)
            for label_name, count in labels.items():
                label = self.labels.label(label_name)
                if OTHER_VALUES not in (zone, label):
                    self.zone_objects.set((device, camera, zone, label), count)
        self._count_overflow()

    def _observe_object_event(self, device: str, data: EventPayload) -> None:
        event = object_event(data.device_id, data)
        if event is None:
            return
        zone = self.zones.label(event.place) if event.place else ""
        self.object_events.inc((device, self.cameras.label(event.camera), zone, self.labels.label(event.label),
                                closed(event.kind, OBJECT_EVENT_KINDS)))
        self._count_overflow()

    def _count_overflow(self) -> None:
        for name, bounded in (("camera", self.cameras), ("zone", self.zones), ("label", self.labels)):
            if bounded.overflowed:
                self.value_overflow.set((name,), bounded.overflowed)

    def _count_states(self, view: FleetView) -> None:
        counts = dict.fromkeys(STATUS_STATES, 0)
        for device in view.devices.values():
            if device.status in counts:
                counts[device.status] += 1
        for state, count in counts.items():
            self.by_state.set((state,), count)

    def gap(self, gap: Gap) -> None:
        key = (self.devices.label(gap.device_id), closed(gap.suffix, TOPICS))
        self.gaps.inc(key)
        self.missing.inc(key, gap.missing)

    def housekeeping(self, duplicates: int, restarts: int, members: int) -> None:
        self.duplicates.set((), duplicates)
        self.restarts.set((), restarts)
        self.members.set((), members)
        times = os.times()
        self.cpu_seconds.set((), times.user + times.system)


class TensorBoardSink:
    """One run folder per device under ``root``; scalars stepped by the message's ``seq``."""

    def __init__(self, root: Path, instance_id: str, devices: DeviceLabels) -> None:
        self.root = root
        self.instance_id = instance_id
        self.devices = devices
        """Shared with the metrics, so that the same devices get a run folder and their own labels."""
        self.writers: dict[str, EventFileWriter] = {}

    def _writer(self, device_id: str) -> EventFileWriter | None:
        if self.devices.label(device_id) == OVERFLOW:
            return None
        writer = self.writers.get(device_id)
        if writer is None:
            writer = self.writers[device_id] = EventFileWriter(self.root / device_id, f".{self.instance_id}")
        return writer

    def write(self, message: Message) -> None:
        scalars = self.scalars(message)
        if not scalars:
            return
        writer = self._writer(message.device_id)
        if writer is None:
            return
        data = message.data
        step = message.seq
        wall_time = data["ts"] if isinstance(data, dict) else data.ts
        if step is None:
            return
        for tag, value in scalars.items():
            writer.scalar(tag, value, int(step), float(wall_time))

    @staticmethod
    def scalars(message: Message) -> dict[str, float]:
        data = message.data
        if isinstance(data, LatencyPayload):
            values = {"fps": data.fps}
            for stage, stats in data.stages.items():
                if stage in STAGES:
                    values[f"latency/{stage}_p95_ms"] = stats.p95_ms
            return values
        if isinstance(data, HealthPayload):
            return {"health/cpu_percent": data.cpu_percent, "health/frames_processed": float(data.frames_processed)}
        if isinstance(data, dict) and message.seq is not None and isinstance(data.get("ts"), (int, float)):
            kind = message.suffix.removeprefix("telemetry/")
            summary = message.summary or summarise(data)
            score = {"drift": summary.psi, "bias": summary.max_difference}.get(kind)
            return {f"{kind}/score": score} if score is not None else {}
        return {}

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class History:
    """The last points of latency p95 and drift per device, for the dashboard's charts."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.points = points
        self.series: dict[str, dict[str, deque[tuple[float, float]]]] = {}

    def add(self, message: Message) -> None:
        data = message.data
        if isinstance(data, LatencyPayload) and END_TO_END in data.stages:
            self._append(message.device_id, "latency_p95_ms", data.ts, data.stages[END_TO_END].p95_ms)
        elif isinstance(data, dict) and message.suffix == "telemetry/drift":
            psi = (message.summary or summarise(data)).psi
            if psi is not None and isinstance(data.get("ts"), (int, float)):
                self._append(message.device_id, "drift_psi", float(data["ts"]), psi)

    def _append(self, device: str, name: str, ts: float, value: float) -> None:
        series = self.series.setdefault(device, {}).setdefault(name, deque(maxlen=self.points))
        series.append((round(ts, 3), round(value, 4)))

    def of(self, device: str) -> dict[str, Any]:
        return {name: list(points) for name, points in self.series.get(device, {}).items()}
