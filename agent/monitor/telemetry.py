"""Builds the agent's payloads (envelope, sequence numbers) and publishes them through the session.

Every outgoing payload is a pydantic model of agent.wire, validated on
construction, so nothing leaves the device that is not in the schema.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from pydantic import BaseModel

from agent.monitor.egress import EgressBlocked, EgressGuard
from agent.monitor.latency import LatencySnapshot
from agent.wire import (
    BrokerHealth,
    CameraHealth,
    CameraLatency,
    CameraStatus,
    DeploymentPayload,
    DeviceState,
    Envelope,
    ErrorInfo,
    EventPayload,
    HealthPayload,
    LatencyPayload,
    ModelBrief,
    ModelPayload,
    ModelRef,
    ReplyPayload,
    ResultsHealth,
    Sequencer,
    Severity,
    StageLatency,
    StageModel,
    StatusPayload,
    Topics,
    clip_text,
    encode_payload,
)

__all__ = ["Telemetry"]

log = structlog.get_logger(__name__)

QOS_STATE = 1
QOS_TELEMETRY = 1
QOS_IMAGE = 1
"""Snapshots: a picture is sent once, and its sender waits for the broker to have it."""


def _clipped(error: dict[str, str] | None) -> dict[str, str] | None:
    """An error whose message fits the schema, however long the original was."""
    return None if error is None else {**error, "message": clip_text(error["message"])}


def _stages(snapshot: LatencySnapshot) -> dict[str, StageLatency]:
    return {
        name: StageLatency(p50_ms=s.p50_ms, p95_ms=s.p95_ms, p99_ms=s.p99_ms, max_ms=s.max_ms, count=s.count)
        for name, s in snapshot.stages.items()
    }


class Telemetry:
    """The agent's one way out to the broker: builds every outgoing payload and publishes it.

    Given the topics, the device id, the agent's version and a sequencer (the outbox's, so
    sequence numbers survive a restart); the MQTT session is attached later (``attach``), and
    the monitors attach an egress guard that blocks or redacts what may not leave. It owns the
    envelope (device id, timestamp, per-topic sequence number) and the QoS and retain choice
    of each kind of message. It owns no thread or task: the agent's tasks (the results
    publisher's among them) await its ``publish`` methods on the asyncio loop.
    """

    def __init__(self, topics: Topics, device_id: str, agent_version: str,
                 sequencer: Sequencer | None = None) -> None:
        self.topics = topics
        self.device_id = device_id
        self.agent_version = agent_version
        self.sequencer = sequencer or Sequencer()
        self._session: Any = None
        self.egress: EgressGuard | None = None

    def attach(self, session: Any) -> None:
        self._session = session

    def envelope(self, key: str) -> dict[str, Any]:
        return {"device_id": self.device_id, "ts": time.time(), "seq": self.sequencer.next(key)}

    @staticmethod
    def encode(payload: BaseModel) -> bytes:
        return encode_payload(payload)

    # ----- builders -----------------------------------------------------------------------
    def status(self, state: DeviceState, *, started_at: float, groups: tuple[str, ...]) -> StatusPayload:
        return StatusPayload(**self.envelope("status"), state=state, agent_version=self.agent_version,
                             started_at=started_at, groups=tuple(groups))

    def model(self, serving: Any, previous: dict[str, str] | None,
              second_stages: Sequence[StageModel] = ()) -> ModelPayload:
        return ModelPayload(
            **self.envelope("model"), name=serving.name, version=serving.version, sha256=serving.sha256,
            runtime=serving.runtime, since=serving.since,
            previous=ModelRef(**previous) if previous else None, second_stages=list(second_stages),
        )

    def latency(self, snapshot: LatencySnapshot, frames_processed: int, frames_dropped: int,
                cameras: Mapping[str, tuple[LatencySnapshot, int]] | None = None) -> LatencyPayload:
        """``cameras``: per camera name, its snapshot and its overwritten frames."""
        per_camera = [
            CameraLatency(name=name, window_frames=snap.window_frames, fps=snap.fps,
                          frames_processed=snap.frames_processed, frames_dropped=dropped,
                          stages=_stages(snap))
            for name, (snap, dropped) in (cameras or {}).items()
        ]
        return LatencyPayload(**self.envelope("telemetry/latency"), window_frames=snapshot.window_frames,
                              fps=snapshot.fps, frames_processed=frames_processed,
                              frames_dropped=frames_dropped, stages=_stages(snapshot), cameras=per_camera)

    def health(self, **fields: Any) -> HealthPayload:
        if fields.get("camera") is not None:
            fields["camera"] = CameraHealth(**fields["camera"])
        fields["cameras"] = [CameraStatus(**row) for row in fields.get("cameras", ())]
        fields["broker"] = BrokerHealth(**fields["broker"])
        if fields.get("model") is not None:
            fields["model"] = ModelBrief(**fields["model"])
        if fields.get("results") is not None:
            fields["results"] = ResultsHealth(**fields["results"])
        return HealthPayload(**self.envelope("telemetry/health"), **fields)

    def deployment(self, **fields: Any) -> DeploymentPayload:
        fields["error"] = _clipped(fields.get("error"))
        return DeploymentPayload(**self.envelope("deployment"), updated=time.time(), **fields)

    def event(self, kind: str, severity: Severity, message: str, data: dict[str, Any] | None = None) -> EventPayload:
        return EventPayload(**self.envelope("events"), kind=kind, severity=severity,
                            message=clip_text(message), data=data or {})

    def reply(self, command_id: str | None, command: str, ok: bool, error: dict[str, str] | None,
              result: dict[str, Any] | None) -> ReplyPayload:
        return ReplyPayload(**self.envelope("reply"), id=command_id, command=clip_text(command),
                            ok=ok, error=None if error is None else ErrorInfo(**_clipped(error) or {}), result=result)

    # ----- publishing ---------------------------------------------------------------------
    async def publish_state(self, topic: str, payload: BaseModel) -> None:
        """Retained state (status, model, deployment): QoS 1, re-sent on every reconnect.

        With an egress guard attached, a value that may not leave is replaced by a marker
        (counted); the state itself is always published."""
        await self._session.publish(topic, self._redacted(topic, self.encode(payload)), qos=QOS_STATE, retain=True)

    def _redacted(self, topic: str, data: bytes) -> bytes:
        if self.egress is None:
            return data
        return self.egress.redact(topic.removeprefix(self.topics.base + "/"), data)

    async def publish(self, topic: str, payload: BaseModel) -> None:
        """Telemetry, events and replies: QoS 1, queued while the broker is away.

        With an egress guard attached, a telemetry payload that is not exactly what its
        topic's schema allows (a frame, a crop, an unknown field) is blocked and counted.
        Replies and events are never dropped (a reply must arrive with its id): a value in
        them that may not leave is replaced by a marker and counted.
        """
        data = self.encode(payload)
        suffix = topic.removeprefix(self.topics.base + "/")
        if self.egress is not None and suffix.startswith("telemetry/"):
            try:
                data = self.egress.check(suffix, data)
            except EgressBlocked as exc:
                log.warning("egress_blocked", topic=topic, reason=exc.reason)
                return
        else:
            data = self._redacted(topic, data)
        await self._session.publish(topic, data, qos=QOS_TELEMETRY, retain=False)

    async def publish_live(self, topic: str, payload: BaseModel, qos: int = 0) -> bool:
        """A camera's results: sent now or not at all (never queued), through the egress guard's
        redaction as events are; False when the broker is away, for the caller to count."""
        return bool(await self._session.publish_now(topic, self._redacted(topic, self.encode(payload)), qos=qos))

    async def publish_image(self, topic: str, data: bytes) -> bool:
        """A camera's snapshot (the bytes of one JPEG): through the egress guard's ``check_image``
        (EgressBlocked, counted, when it may not leave), then sent now at QoS 1 or not at all;
        False when the broker is away, for the caller to count."""
        if self.egress is not None:
            data = self.egress.check_image(topic.removeprefix(self.topics.base + "/"), data)
        return bool(await self._session.publish_now(topic, data, qos=QOS_IMAGE))

    def signal(self, model: type[Envelope], suffix: str, snapshot: dict[str, Any]) -> Envelope:
        """A drift, bias or leak payload around a monitor's snapshot."""
        return model(**self.envelope(suffix), **snapshot)
