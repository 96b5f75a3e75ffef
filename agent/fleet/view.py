"""What the other side of the wire knows about each device, built from what the devices publish.

``FleetView.apply(topic, payload)`` takes any message of the contract
(``<prefix>/<id>/status|model|deployment|reply|events|telemetry/<kind>``) and
updates that device's ``DeviceView``. Payloads of agent.wire are
validated; the drift, bias and leak telemetry is read tolerantly: any JSON
object, whose ``state`` fields (``ok``, ``warn``, ``alarm``; others ignored)
anywhere in the document give the signal's worst state. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.fleet.results import (
    CountsDigest,
    ObjectEvent,
    ResultsDigest,
    SnapshotPicture,
    camera_topic,
    loose_object,
    object_event,
    read_counts,
    read_results,
    read_snapshot,
)
from agent.wire import (
    PAYLOADS,
    DeploymentPayload,
    DeviceState,
    EventPayload,
    HealthPayload,
    LatencyPayload,
    ModelPayload,
    PayloadError,
    SignalState,
    StatusPayload,
    decode_payload,
)

__all__ = [
    "ALARM_SEVERITIES",
    "SIGNALS",
    "STATE_RANK",
    "TELEMETRY_KINDS",
    "Alarm",
    "DeviceView",
    "FleetView",
    "Message",
    "Summary",
    "in_contract",
    "split_topic",
    "summarise",
    "worst_state",
]

SIGNALS = ("drift", "bias", "leak")
"""Telemetry kinds whose payloads carry per-metric ``state`` fields."""
TELEMETRY_KINDS = ("health", "latency", *SIGNALS)
"""The telemetry kinds of the wire contract (docs/mqtt.md); a message of any other kind is not
kept anywhere (a device publishing ever new kinds would grow every per-kind table)."""
RANKED = (SignalState.OK, SignalState.WARN, SignalState.ALARM)
"""The judged states, best first."""
STATE_RANK: dict[str, int] = {state: rank for rank, state in enumerate(RANKED)}
"""A judged state's rank (ok < warn < alarm), keyed so that a state read from JSON finds its rank."""
ALARM_SEVERITIES = ("warning", "alarm")
MAX_ALARMS = 200
"""Recent alarm and warning events kept for the whole fleet (oldest dropped)."""
END_TO_END = "end_to_end"
MAX_CAMERAS = 32
"""Cameras per device whose counts are kept (a device naming ever new cameras grows no table)."""
MAX_OBJECT_EVENTS = 20
"""A device's latest object, zone and line events kept for the dashboard (oldest dropped)."""


@dataclass(frozen=True)
class Summary:
    """What the consumer reads from a tolerantly read telemetry document, found in one walk of it."""

    state: SignalState | None
    """The worst ``state`` field (ok < warn < alarm) anywhere in the document."""
    psi: float | None
    """The largest ``psi`` number anywhere (drift)."""
    max_difference: float | None
    """The largest ``max_difference`` number anywhere (bias)."""


@dataclass(frozen=True)
class Message:
    """A message of one device: ``suffix`` is what follows ``<prefix>/<id>/`` (``telemetry/latency``)."""

    device_id: str
    suffix: str
    data: Any
    """The validated payload, or a dict for tolerantly read telemetry."""
    summary: Summary | None = None
    """Of a tolerantly read telemetry document (``data`` is then a dict)."""

    @property
    def seq(self) -> int | None:
        """The payload's sequence number; None when it has none (a loose document may lack it)."""
        data = self.data
        seq = data.get("seq") if isinstance(data, dict) else getattr(data, "seq", None)
        return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


@dataclass(frozen=True)
class Alarm:
    device_id: str
    ts: float
    kind: str
    severity: str
    message: str


@dataclass
class DeviceView:
    """The latest of everything one device said; None where it has not said it yet."""

    device_id: str
    status: str | None = None
    groups: tuple[str, ...] = ()
    started_at: float | None = None
    model: str | None = None
    version: str | None = None
    previous_version: str | None = None
    deployment: DeploymentPayload | None = None
    fps: float | None = None
    latency_p95_ms: float | None = None
    frames_processed: int | None = None
    cameras: tuple[tuple[str, str, float], ...] = ()
    """``(name, state, capture fps)`` of each camera in the latest health telemetry."""
    signals: dict[str, SignalState] = field(default_factory=dict)
    drift_score: float | None = None
    """The largest PSI in the latest drift telemetry."""
    bias_score: float | None = None
    """The largest parity difference in the latest bias telemetry."""
    last_seen: float | None = None
    """Device time of the newest message, seconds."""
    alarms_seen: int = 0
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    """Per camera, the latest retained counts: objects per zone and label."""
    object_events: deque[ObjectEvent] = field(default_factory=lambda: deque(maxlen=MAX_OBJECT_EVENTS))
    results_seen: int = 0
    snapshots: dict[str, tuple[int, SnapshotPicture]] = field(default_factory=dict)
    """Per camera (at most ``MAX_CAMERAS``), the latest picture of ``snapshots/<camera>`` and how many
    came before it and it (the dashboard's cue that it changed)."""

    @property
    def alarmed(self) -> bool:
        return any(state == SignalState.ALARM for state in self.signals.values())

    @property
    def shadow_agreement(self) -> float | None:
        """The latest deployment's shadow agreement (a shadow deploy's report), None without one."""
        agreement = (self.deployment.shadow or {}).get("agreement") if self.deployment is not None else None
        return float(agreement) if isinstance(agreement, (int, float)) else None


def split_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(device_id, suffix)`` of ``<prefix>/<id>/<suffix>``; None for other topics."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    device, _, suffix = topic[len(head):].partition("/")
    if not device or not suffix or device == "group" or device.startswith("_"):
        return None
    return device, suffix


def _walk(document: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(document, list):
        for item in document:
            yield from _walk(item)


def worst_state(document: Any) -> str | None:
    """The worst of the ``state`` fields (ok < warn < alarm) anywhere in the document."""
    states = [v for k, v in _walk(document) if k == "state" and v in STATE_RANK]
    return max(states, key=STATE_RANK.__getitem__) if states else None


def largest(document: Any, key: str) -> float | None:
    values = [float(v) for k, v in _walk(document)
              if k == key and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(values) if values else None


def summarise(document: dict[str, Any]) -> Summary:
    """``worst_state``, ``largest(psi)`` and ``largest(max_difference)`` in one walk, without recursion.

    Exact type checks: the document comes from ``orjson.loads`` (plain dict, list, str, int, float,
    bool, None), where ``bool`` is not an ``int`` here, as ``largest`` wants.
    """
    rank = -1
    found: dict[str, float] = {}
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if type(node) is list:
            stack.extend(node)
            continue
        for key, value in node.items():
            kind = type(value)
            if kind is dict or kind is list:
                stack.append(value)
            elif key == "state":
                if kind is str and value in STATE_RANK and STATE_RANK[value] > rank:
                    rank = STATE_RANK[value]
            elif (kind is float or kind is int) and key in _SCORES:
                found[key] = max(found.get(key, float(value)), float(value))
    return Summary(RANKED[rank] if rank >= 0 else None, found.get("psi"), found.get("max_difference"))


_SCORES = frozenset(("psi", "max_difference"))


STRICT: dict[str, type[Any]] = {suffix: PAYLOADS[suffix] for suffix in (
    "status", "model", "deployment", "reply", "events", "telemetry/health", "telemetry/latency")}
"""The topics a view validates against their model in agent.wire (the retained ``cameras`` is not read here)."""


CONTRACT_SUFFIXES = frozenset(STRICT) | {f"telemetry/{kind}" for kind in TELEMETRY_KINDS}


def in_contract(suffix: str) -> bool:
    """Whether ``suffix`` is a topic of the wire contract (a known telemetry kind included)."""
    return suffix in CONTRACT_SUFFIXES or camera_topic(suffix) is not None


def decode(suffix: str, data: bytes) -> Any:
    """The payload of ``suffix``: a schema model, or a dict for the signal telemetry kinds."""
    model = STRICT.get(suffix)
    if model is not None:
        return decode_payload(model, data)
    per_camera = camera_topic(suffix)
    if per_camera is not None:
        kind, camera = per_camera
        if kind == "snapshots":
            return read_snapshot(data, camera)
        return read_results(data, camera) if kind == "results" else read_counts(data, camera)
    if in_contract(suffix):
        return loose_object(data)
    raise PayloadError(f"topic suffix {suffix!r} is not part of the contract")


class FleetView:
    """Every device seen under ``prefix``; ``apply()`` one message at a time."""

    def __init__(self, prefix: str = "edge") -> None:
        self.prefix = prefix
        self.devices: dict[str, DeviceView] = {}
        self.alarms: deque[Alarm] = deque(maxlen=MAX_ALARMS)
        self.rejected = 0

    def device(self, device_id: str) -> DeviceView:
        view = self.devices.get(device_id)
        if view is None:
            view = self.devices[device_id] = DeviceView(device_id)
        return view

    def parse(self, topic: str, data: bytes) -> Message | None:
        """The message on ``topic``, or None when it is not a device topic or does not parse.

        An empty payload (a retained message being cleared) forgets that state.
        """
        where = split_topic(self.prefix, topic)
        return None if where is None else self.parse_at(*where, data)

    def parse_at(self, device: str, suffix: str, data: bytes) -> Message | None:
        """``parse()`` of ``<prefix>/<device>/<suffix>``, the topic already split."""
        if not data:
            return Message(device, suffix, None)
        try:
            document = decode(suffix, data)
        except PayloadError:
            self.rejected += 1
            return None
        return Message(device, suffix, document, summarise(document) if isinstance(document, dict) else None)

    def apply(self, topic: str, data: bytes) -> Message | None:
        message = self.parse(topic, data)
        if message is not None:
            self.update(message)
        return message

    def update(self, message: Message) -> None:
        view = self.device(message.device_id)
        data = message.data
        ts = data.get("ts") if isinstance(data, dict) else getattr(data, "ts", None)
        if isinstance(ts, (int, float)) and message.suffix != "status":
            view.last_seen = max(view.last_seen or 0.0, float(ts))
        if isinstance(data, ResultsDigest):
            view.results_seen += 1
            return
        if isinstance(data, SnapshotPicture) or (data is None and message.suffix.startswith("snapshots/")):
            self._on_snapshot(view, message.suffix.removeprefix("snapshots/"), data)
            return
        if isinstance(data, CountsDigest) or (data is None and message.suffix.startswith("counts/")):
            self._on_counts(view, message.suffix.removeprefix("counts/"), data)
            return
        handler = getattr(self, "_on_" + message.suffix.replace("/", "_"), None)
        if handler is not None:
            handler(view, data)
        elif message.suffix.startswith("telemetry/") and isinstance(data, dict):
            self._on_signal(view, message.suffix.removeprefix("telemetry/"), message.summary or summarise(data))

    # ----- per topic -------------------------------------------------------------------------
    def _on_status(self, view: DeviceView, data: StatusPayload | None) -> None:
        if data is None:
            view.status = None
            return
        view.status = data.state
        view.groups = data.groups
        view.started_at = data.started_at
        if data.state == DeviceState.ONLINE:
            view.last_seen = max(view.last_seen or 0.0, data.ts)

    def _on_model(self, view: DeviceView, data: ModelPayload | None) -> None:
        view.model = data.name if data else None
        view.version = data.version if data else None
        view.previous_version = data.previous.version if data and data.previous else None

    def _on_deployment(self, view: DeviceView, data: DeploymentPayload | None) -> None:
        view.deployment = data

    def _on_counts(self, view: DeviceView, camera: str, data: CountsDigest | None) -> None:
        if data is None:
            view.counts.pop(camera, None)
        elif camera in view.counts or len(view.counts) < MAX_CAMERAS:
            view.counts[camera] = data.zones

    def _on_snapshot(self, view: DeviceView, camera: str, data: SnapshotPicture | None) -> None:
        if data is None:
            view.snapshots.pop(camera, None)
        elif camera in view.snapshots or len(view.snapshots) < MAX_CAMERAS:
            seen = view.snapshots.get(camera, (0, data))[0]
            view.snapshots[camera] = (seen + 1, data)

    def _on_events(self, view: DeviceView, data: EventPayload | None) -> None:
        if data is None:
            return
        seen = object_event(view.device_id, data)
        if seen is not None:
            view.object_events.append(seen)
        if data.severity not in ALARM_SEVERITIES:
            return
        view.alarms_seen += data.severity == "alarm"
        self.alarms.append(Alarm(view.device_id, data.ts, data.kind, data.severity, data.message))
        signal, state = data.data.get("signal"), data.data.get("state")
        if signal in SIGNALS and state in STATE_RANK:
            view.signals[signal] = SignalState(state)

    def _on_telemetry_latency(self, view: DeviceView, data: LatencyPayload | None) -> None:
        if data is None:
            return
        view.fps = data.fps
        stage = data.stages.get(END_TO_END)
        view.latency_p95_ms = stage.p95_ms if stage is not None else None
        view.frames_processed = data.frames_processed

    def _on_telemetry_health(self, view: DeviceView, data: HealthPayload | None) -> None:
        if data is None:
            return
        view.frames_processed = data.frames_processed
        view.cameras = tuple((c.name, c.state, c.fps) for c in data.cameras)
        if data.model is not None and view.model is None:
            view.model, view.version = data.model.name, data.model.version

    def _on_signal(self, view: DeviceView, kind: str, summary: Summary) -> None:
        if kind not in SIGNALS:
            return
        if summary.state is not None:
            view.signals[kind] = summary.state
        if kind == "drift":
            view.drift_score = summary.psi
        elif kind == "bias":
            view.bias_score = summary.max_difference

    def in_group(self, group: str | None) -> list[DeviceView]:
        return sorted((v for v in self.devices.values() if group is None or group in v.groups),
                      key=lambda v: v.device_id)
