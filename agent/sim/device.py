"""The inside of one simulated agent: what it serves, how it deploys, what telemetry it sends.

Used by agent.sim.simulate, which gives it a real MQTT session. It knows the agent only
through the wire contract: commands are parsed by ``parse_command`` and answered once per
command name and id (a repeat is answered from an in-memory reply cache, a repeat that
arrives while the first runs waits for its outcome); every payload is a model of agent.wire,
except drift, bias and leak, which are JSON objects of the same shape as the agent's
(per-metric ``state`` in ok, warn, alarm). The numbers are made up: nothing is downloaded
or inferred here.

A shadow deploy (``"mode": "shadow"``) goes as the agent's does: state ``shadow`` with a
report, then promoted (automatically, or on a ``promote`` command) or discarded; its run is
agent.sim.shadow's. The telemetry's payloads are built in agent.sim.telemetry; the device
publishes them every period.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent import __version__
from agent.sim.errors import SimCommandFailed
from agent.sim.shadow import SimShadow
from agent.sim.telemetry import (
    BASE_FPS,
    BASE_LATENCY_MS,
    alarm_raised,
    bias,
    drift,
    health_payload,
    latency_payload,
    leak,
    stages,
)
from agent.wire import (
    CommandBase,
    CommandError,
    DeployCommand,
    DeploymentPayload,
    DeploymentState,
    DeploymentStep,
    DeviceState,
    ErrorInfo,
    EventPayload,
    ModelBrief,
    ModelPayload,
    ModelRef,
    PingCommand,
    PromoteCommand,
    ReplyPayload,
    RollbackCommand,
    Sequencer,
    Severity,
    StatusCommand,
    StatusPayload,
    Topics,
    clip_text,
    encode_payload,
    parse_command,
)

if TYPE_CHECKING:
    from agent.sim.spec import SimSpec

__all__ = ["DEPLOY_STEPS", "SIM_RUNTIME", "SimDevice", "SimModel", "fails", "fraction"]

log = structlog.get_logger(__name__)


SIM_RUNTIME = "simulated"
DEPLOY_STEPS = (
    (DeploymentStep.RECEIVED, 0.0), (DeploymentStep.DOWNLOADING, 0.2), (DeploymentStep.VERIFYING, 0.45),
    (DeploymentStep.LOADING, 0.6), (DeploymentStep.WARMING, 0.75), (DeploymentStep.VALIDATING, 0.9),
)
"""The agent's deployment steps up to ``active``, with the progress each reports."""
REPLIES_KEPT = 100
"""Command outcomes a simulated agent remembers (by command name and id), to answer a repeat."""
QOS = 1
"""Everything a simulated agent publishes (state, telemetry, events, replies), as the agent does."""
PROMOTE_POLL_S = 0.05
"""How often an answered ``promote`` looks whether the candidate serves yet."""


@dataclass(frozen=True)
class _Outcome:
    """What a command's reply says, kept to answer a repeat of its id."""

    ok: bool
    error: ErrorInfo | None = None
    result: dict[str, Any] | None = None


def _error(code: str, message: str) -> ErrorInfo:
    return ErrorInfo(code=code, message=clip_text(message))


@dataclass(frozen=True)
class SimModel:
    name: str
    version: str
    sha256: str
    since: float


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fraction(device_id: str, salt: str) -> float:
    """A stable number in [0, 1) per device and salt."""
    digest = hashlib.sha256(f"{device_id}\0{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fails(device_id: str, version: str, rate: float) -> bool:
    """True for the share ``rate`` of devices (by hash) that fail this version."""
    return fraction(device_id, version) < rate


class SimDevice:
    """One simulated agent's state, command handling and telemetry, behind one MQTT session.

    ``state_dir`` is accepted for the callers that pass one; a simulated agent keeps its replies
    in memory (a restarted simulator is a new fleet)."""

    def __init__(self, spec: SimSpec, device_id: str, state_dir: Path | None = None) -> None:
        self.spec = spec
        self.device_id = device_id
        self.topics = Topics(spec.prefix, device_id)
        self.agent_version = f"{__version__}-sim"
        self.sequencer = Sequencer()
        self.started_at = time.time()
        self.current = SimModel(spec.model_name, spec.model_version, _sha(spec.model_version), self.started_at)
        self.previous: SimModel | None = None
        self.deployment: dict[str, Any] | None = None
        self.alarmed = fraction(device_id, "alarm") < spec.alarm_rate
        self._alarm_sent = False
        self._busy = False
        self._session: Any = None
        self._probation: asyncio.Task[None] | None = None
        self._random = random.Random(device_id)
        self._latency_ms = BASE_LATENCY_MS[0] + (BASE_LATENCY_MS[1] - BASE_LATENCY_MS[0]) * fraction(device_id, "ms")
        self._handlers: dict[str, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            "ping": self.ping, "status": self.status, "deploy": self.deploy, "rollback": self.rollback,
            "promote": self.promote}
        self._shadow = SimShadow(spec, self._publish_deployment, self._event)
        self._answered: OrderedDict[tuple[str, str], _Outcome] = OrderedDict()
        self._running: dict[tuple[str, str], asyncio.Future[_Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, session: Any) -> None:
        """The MQTT session that carries this device's messages."""
        self._session = session

    def _envelope(self, key: str) -> dict[str, Any]:
        return {"device_id": self.device_id, "ts": time.time(), "seq": self.sequencer.next(key)}

    async def _publish(self, topic: str, data: bytes, retain: bool = False) -> None:
        await self._session.publish(topic, data, qos=QOS, retain=retain)

    # ----- state topics ----------------------------------------------------------------------
    def _status(self, state: DeviceState) -> StatusPayload:
        return StatusPayload(**self._envelope("status"), state=state, agent_version=self.agent_version,
                             started_at=self.started_at, groups=(self.spec.group,))

    def status_bytes(self, state: DeviceState) -> bytes:
        return encode_payload(self._status(state))

    async def publish_status(self, state: DeviceState) -> None:
        await self._publish(self.topics.status, self.status_bytes(state), retain=True)

    async def on_connect(self) -> None:
        await self.publish_status(DeviceState.ONLINE)
        await self._publish_model()
        if self.deployment is not None:
            await self._publish_deployment(**self.deployment)

    async def _publish_model(self) -> None:
        previous = ModelRef(name=self.previous.name, version=self.previous.version) if self.previous else None
        payload = ModelPayload(**self._envelope("model"), name=self.current.name, version=self.current.version,
                               sha256=self.current.sha256, runtime=SIM_RUNTIME, since=self.current.since,
                               previous=previous)
        await self._publish(self.topics.model, encode_payload(payload), retain=True)

    async def _publish_deployment(self, **fields: Any) -> None:
        self.deployment = fields
        error = fields["error"]
        payload = DeploymentPayload(**self._envelope("deployment"), updated=time.time(),
                                    **{**fields, "error": None if error is None else _error(**error)})
        await self._publish(self.topics.deployment, encode_payload(payload), retain=True)

    async def _event(self, kind: str, severity: Severity, message: str, data: dict[str, Any] | None = None) -> None:
        payload = EventPayload(**self._envelope("events"), kind=kind, severity=severity,
                               message=clip_text(message), data=data or {})
        await self._publish(self.topics.events, encode_payload(payload))

    async def _reply(self, command_id: str | None, name: str, outcome: _Outcome) -> None:
        payload = ReplyPayload(**self._envelope("reply"), id=command_id, command=clip_text(name), ok=outcome.ok,
                               error=outcome.error, result=outcome.result)
        await self._publish(self.topics.reply, encode_payload(payload))

    # ----- command handling ------------------------------------------------------------------
    async def on_message(self, topic: str, payload: bytes) -> None:
        """Called by the MQTT session for every message; a command runs in its own task."""
        name = self.topics.command_name(topic)
        if name is None:
            return
        task = asyncio.create_task(self._command(name, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, name: str, payload: bytes) -> None:
        try:
            command = parse_command(name, payload)
        except CommandError as exc:
            await self._reply(exc.command_id, name, _Outcome(False, _error(exc.code, exc.message)))
            await self._event("command_rejected", "warning", f"command {name!r} rejected: {exc.message}",
                              {"command": name, "code": exc.code})
            return
        key = (name, command.id)
        outcome = self._answered.get(key)
        running = self._running.get(key)
        if outcome is None and running is not None:
            outcome = await asyncio.shield(running)
        elif outcome is None:
            future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
            self._running[key] = future
            try:
                outcome = await self._run(name, command)
            finally:
                self._running.pop(key, None)
            self._answered[key] = outcome
            while len(self._answered) > REPLIES_KEPT:
                self._answered.popitem(last=False)
            future.set_result(outcome)
        await self._reply(command.id, name, outcome)

    async def _run(self, name: str, command: CommandBase) -> _Outcome:
        handler = self._handlers.get(name)
        if handler is None:
            return _Outcome(False, _error("unknown_command", f"{name!r} is not handled here"))
        try:
            return _Outcome(True, None, await handler(command))
        except SimCommandFailed as exc:
            return _Outcome(False, _error(exc.code, exc.message), exc.result)
        except Exception as exc:  # a handler bug must still be answered
            log.exception("sim_command_crashed", device=self.device_id, command=name, id=command.id)
            return _Outcome(False, _error("internal_error", f"{type(exc).__name__}: {exc}"))

    # ----- commands ----------------------------------------------------------------------------
    async def ping(self, command: PingCommand) -> dict[str, Any]:
        return {"pong": True}

    async def status(self, command: StatusCommand) -> dict[str, Any]:
        return {"model": {"name": self.current.name, "version": self.current.version, "runtime": SIM_RUNTIME},
                "deployment": self.deployment and {k: self.deployment[k] for k in ("deployment_id", "state")},
                "simulated": True}

    async def deploy(self, command: DeployCommand) -> dict[str, Any]:
        if self._busy:
            raise SimCommandFailed("busy", "another deployment or rollback is in progress; retry when it ends")
        self._busy = True
        try:
            await self._finish_probation()
            fields: dict[str, Any] = {"deployment_id": command.id, "name": command.name, "version": command.version}
            pause = self.spec.slow_deploy_s / len(DEPLOY_STEPS)
            failing = fails(self.device_id, command.version, self.spec.fail_rate)
            for step, progress in DEPLOY_STEPS:
                await self._publish_deployment(**fields, state=step.state, step=step, progress=progress, error=None)
                await asyncio.sleep(pause)
                if failing and self.spec.fail_mode == "download" and step is DeploymentStep.DOWNLOADING:
                    error = {"code": "download_failed", "message": "simulated: the artifact could not be fetched"}
                    await self._publish_deployment(**fields, state=DeploymentState.FAILED, step=step, progress=0.0,
                                                   error=error)
                    await self._event("deployment_failed", "warning", f"deployment {command.id}: failed", fields)
                    raise SimCommandFailed(error["code"], f"downloading: {error['message']}",
                                        {"deployment_id": command.id, "step": step})
            answer: dict[str, Any] = {"deployment_id": command.id, "name": command.name, "version": command.version,
                                      "state": DeploymentState.ACTIVE}
            if command.mode == "shadow":
                report = await self._shadow.run(command, fields, failing and self.spec.fail_mode == "shadow")
                fields["shadow"] = answer["shadow"] = report
            await self._swap(SimModel(command.name, command.version, command.sha256, time.time()), "deploy")
            await self._publish_deployment(**fields, state=DeploymentState.ACTIVE, step=DeploymentStep.ACTIVE,
                                           progress=1.0, error=None)
            self._probation = asyncio.create_task(
                self._watch(fields, failing and self.spec.fail_mode == "probation"))
        finally:
            self._busy = False
        return answer

    async def promote(self, command: PromoteCommand) -> dict[str, Any]:
        """Serve the candidate of the shadow run waiting for a promote (its bound met)."""
        if not self._busy or self.deployment is None or self.deployment["state"] is not DeploymentState.SHADOW:
            raise SimCommandFailed("no_shadow", "no shadow run is in progress")
        self._shadow.promote()
        while self._busy:  # answered once the candidate serves, as the agent does
            await asyncio.sleep(PROMOTE_POLL_S)
        return {"name": self.current.name, "version": self.current.version, "state": DeploymentState.ACTIVE}

    async def rollback(self, command: RollbackCommand) -> dict[str, Any]:
        if self._busy:
            raise SimCommandFailed("busy", "a deployment or rollback is in progress; retry when it ends")
        if self.previous is None:
            raise SimCommandFailed("no_previous", f"no version of {self.current.name} served before this one")
        self._busy = True
        try:
            await self._cancel_probation()
            await self._swap(self.previous, command.reason or "rollback command")
            if self.deployment is not None and self.deployment["state"] is DeploymentState.ACTIVE:
                error = {"code": "rolled_back_by_command", "message": command.reason or "rollback command"}
                await self._publish_deployment(**{**self.deployment, "state": DeploymentState.ROLLED_BACK,
                                                  "error": error})
        finally:
            self._busy = False
        return {"name": self.current.name, "version": self.current.version}

    async def _swap(self, new: SimModel, reason: str) -> None:
        old, self.current = self.current, new
        self.previous = old
        await self._publish_model()
        await self._event("engine_swapped", "info", f"now serving {new.name} {new.version} ({reason})",
                          {"from_version": old.version, "to_version": new.version, "reason": reason})

    async def _watch(self, fields: dict[str, Any], failing: bool) -> None:
        await asyncio.sleep(self.spec.probation_s)
        if not failing:
            await self._publish_deployment(**fields, state=DeploymentState.COMMITTED, step=DeploymentStep.COMMITTED,
                                           progress=1.0, error=None)
            await self._event("deployment_committed", "info", f"deployment {fields['deployment_id']}: committed",
                              {"deployment_id": fields["deployment_id"]})
            return
        assert self.previous is not None
        await self._swap(self.previous, "probation: simulated failure")
        error = {"code": "probation_failed", "message": "simulated: error rate over the bound"}
        await self._publish_deployment(**fields, state=DeploymentState.ROLLED_BACK, step=DeploymentStep.ACTIVE,
                                       progress=1.0, error=error)
        await self._event("deployment_rolled_back", "warning",
                          f"deployment {fields['deployment_id']}: rolled_back ({error['message']})",
                          {"deployment_id": fields["deployment_id"], "error": error})

    async def _finish_probation(self) -> None:
        """A newer deploy commits the one in probation early, as the agent does."""
        task, self._probation = self._probation, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.deployment is not None and self.deployment["state"] is DeploymentState.ACTIVE:
                await self._publish_deployment(**{**self.deployment, "state": DeploymentState.COMMITTED,
                                                  "step": DeploymentStep.COMMITTED})

    async def _cancel_probation(self) -> None:
        task, self._probation = self._probation, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        await self._cancel_probation()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ----- telemetry ---------------------------------------------------------------------------
    async def telemetry_loop(self) -> None:
        await asyncio.sleep(self._random.uniform(0, self.spec.period_s))
        while True:
            await self.publish_telemetry()
            await asyncio.sleep(self.spec.period_s)

    async def publish_telemetry(self) -> None:
        """One period's telemetry (agent.sim.telemetry builds it), and the alarm event once if in alarm."""
        uptime = time.time() - self.started_at
        fps = BASE_FPS * (0.95 + 0.05 * self._random.random())
        frames = int(BASE_FPS * uptime)
        by_stage = stages(self._latency_ms, self._random)
        latency = latency_payload(self._envelope("telemetry/latency"), fps, frames, by_stage)
        await self._publish(self.topics.telemetry("latency"), encode_payload(latency))
        model = ModelBrief(name=self.current.name, version=self.current.version, runtime=SIM_RUNTIME)
        health = health_payload(self._envelope("telemetry/health"), uptime, fps, frames, model, self._random)
        await self._publish(self.topics.telemetry("health"), encode_payload(health))
        documents = (("drift", drift(self.current.name, self.current.version, self.alarmed, self._random)),
                     ("bias", bias()), ("leak", leak()))
        for kind, document in documents:
            envelope = self._envelope(f"telemetry/{kind}")
            await self._session.publish(self.topics.telemetry(kind),
                                        json.dumps({**envelope, **document}).encode(), qos=QOS)
        if self.alarmed and not self._alarm_sent:
            self._alarm_sent = True
            await self._event(*alarm_raised())

