"""The inside of one simulated agent: what it serves, how it deploys, what telemetry it sends.

Used by agent.sim.simulate, which gives it a real MQTT session. The command
handlers run behind the real ``CommandRouter`` and ``CommandJournal``; the
payloads are built by the real ``Telemetry`` builders from agent.wire,
except drift, bias and leak, which are JSON objects of the same shape as the
agent's (per-metric ``state`` in ok, warn, alarm). The numbers are made up:
nothing is downloaded or inferred here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.device.commands import CommandFailed, CommandJournal, CommandRouter, Outcome
from agent.monitor.latency import LatencySnapshot, StageStats
from agent.monitor.telemetry import Telemetry
from agent.wire import CommandError, DeployCommand, PingCommand, RollbackCommand, StatusCommand
from agent.wire.topics import Topics

if TYPE_CHECKING:
    from agent.sim.simulate import SimSpec

__all__ = ["DEPLOY_STEPS", "SIM_RUNTIME", "SimDevice", "SimModel", "fails", "fraction"]

SIM_RUNTIME = "simulated"
SIM_CAMERA = "camera0"
"""The one camera a simulated device reports in its health."""
DEPLOY_STEPS = (
    ("received", 0.0), ("downloading", 0.2), ("verifying", 0.45), ("loading", 0.6),
    ("warming", 0.75), ("validating", 0.9),
)
"""The agent's deployment states up to ``active``, with the progress each reports."""
BASE_FPS = 15.0
BASE_LATENCY_MS = (18.0, 60.0)
"""End-to-end p50 of a simulated device lies in this range (by hash of its id)."""
STAGE_SHARES = {"capture_wait": 0.1, "preprocess": 0.15, "infer": 0.6, "postprocess": 0.15}
WINDOW_FRAMES = 300
DRIFT_ALARM_PSI = 0.42
DRIFT_ALARM_BOUND = 0.25
DRIFT_OK_PSI = 0.03
RSS_BYTES = 180_000_000
MEMORY_AVAILABLE_BYTES = 4_000_000_000
DISK_FREE_BYTES = 20_000_000_000
JOURNAL_SIZE = 100
"""Command ids a simulated agent remembers."""


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
    def __init__(self, spec: SimSpec, device_id: str, state_dir: Path) -> None:
        self.spec = spec
        self.device_id = device_id
        self.topics = Topics(spec.prefix, device_id)
        self.telemetry = Telemetry(self.topics, device_id, f"{__version__}-sim")
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
        journal = CommandJournal(state_dir / device_id / "commands.json", JOURNAL_SIZE)
        handlers: dict[str, Any] = {"ping": self.ping, "status": self.status, "deploy": self.deploy,
                                    "rollback": self.rollback}
        self.router = CommandRouter(self.topics, journal, handlers, self._reply, self._rejected)

    def attach(self, session: Any) -> None:
        """The MQTT session that carries this device's messages."""
        self._session = session
        self.telemetry.attach(session)

    # ----- state topics ----------------------------------------------------------------------
    def status_bytes(self, state: str) -> bytes:
        return self.telemetry.encode(self.telemetry.status(state, started_at=self.started_at,
                                                           groups=(self.spec.group,)))

    async def on_connect(self) -> None:
        await self.telemetry.publish_state(self.topics.status, self.telemetry.status(
            "online", started_at=self.started_at, groups=(self.spec.group,)))
        await self._publish_model()
        if self.deployment is not None:
            await self._publish_deployment(**self.deployment)

    async def _publish_model(self) -> None:
        previous = {"name": self.previous.name, "version": self.previous.version} if self.previous else None
        serving = _Serving(self.current)
        await self.telemetry.publish_state(self.topics.model, self.telemetry.model(serving, previous))

    async def _publish_deployment(self, **fields: Any) -> None:
        self.deployment = fields
        await self.telemetry.publish_state(self.topics.deployment, self.telemetry.deployment(**fields))

    async def _event(self, kind: str, severity: str, message: str, data: dict[str, Any] | None = None) -> None:
        await self.telemetry.publish(self.topics.events, self.telemetry.event(kind, severity, message, data))

    async def _reply(self, command_id: str | None, outcome: Outcome) -> None:
        payload = self.telemetry.reply(command_id, outcome.command, outcome.ok, outcome.error, outcome.result)
        await self.telemetry.publish(self.topics.reply, payload)

    async def _rejected(self, name: str, error: CommandError) -> None:
        await self._event("command_rejected", "warning", f"command {name!r} rejected: {error.message}",
                          {"command": name, "code": error.code})

    # ----- commands ----------------------------------------------------------------------------
    async def ping(self, command: PingCommand) -> dict[str, Any]:
        return {"pong": True}

    async def status(self, command: StatusCommand) -> dict[str, Any]:
        return {"model": {"name": self.current.name, "version": self.current.version, "runtime": SIM_RUNTIME},
                "deployment": self.deployment and {k: self.deployment[k] for k in ("deployment_id", "state")},
                "simulated": True}

    async def deploy(self, command: DeployCommand) -> dict[str, Any]:
        if self._busy:
            raise CommandFailed("busy", "another deployment or rollback is in progress; retry when it ends")
        self._busy = True
        try:
            await self._finish_probation()
            fields = {"deployment_id": command.id, "name": command.name, "version": command.version}
            pause = self.spec.slow_deploy_s / len(DEPLOY_STEPS)
            failing = fails(self.device_id, command.version, self.spec.fail_rate)
            for state, progress in DEPLOY_STEPS:
                await self._publish_deployment(**fields, state=state, step=state, progress=progress, error=None)
                await asyncio.sleep(pause)
                if failing and self.spec.fail_mode == "download" and state == "downloading":
                    error = {"code": "download_failed", "message": "simulated: the artifact could not be fetched"}
                    await self._publish_deployment(**fields, state="failed", step=state, progress=0.0, error=error)
                    await self._event("deployment_failed", "warning", f"deployment {command.id}: failed", fields)
                    raise CommandFailed(error["code"], f"downloading: {error['message']}",
                                        {"deployment_id": command.id, "step": state})
            await self._swap(SimModel(command.name, command.version, command.sha256, time.time()), "deploy")
            await self._publish_deployment(**fields, state="active", step="active", progress=1.0, error=None)
            self._probation = asyncio.create_task(self._watch(fields, failing))
        finally:
            self._busy = False
        return {"deployment_id": command.id, "name": command.name, "version": command.version, "state": "active"}

    async def rollback(self, command: RollbackCommand) -> dict[str, Any]:
        if self._busy:
            raise CommandFailed("busy", "a deployment or rollback is in progress; retry when it ends")
        if self.previous is None:
            raise CommandFailed("no_previous", f"no version of {self.current.name} served before this one")
        self._busy = True
        try:
            await self._cancel_probation()
            await self._swap(self.previous, command.reason or "rollback command")
            if self.deployment is not None and self.deployment["state"] == "active":
                error = {"code": "rolled_back_by_command", "message": command.reason or "rollback command"}
                await self._publish_deployment(**{**self.deployment, "state": "rolled_back", "error": error})
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
            await self._publish_deployment(**fields, state="committed", step="committed", progress=1.0, error=None)
            await self._event("deployment_committed", "info", f"deployment {fields['deployment_id']}: committed",
                              {"deployment_id": fields["deployment_id"]})
            return
        assert self.previous is not None
        await self._swap(self.previous, "probation: simulated failure")
        error = {"code": "probation_failed", "message": "simulated: error rate over the bound"}
        await self._publish_deployment(**fields, state="rolled_back", step="active", progress=1.0, error=error)
        await self._event("deployment_rolled_back", "warning",
                          f"deployment {fields['deployment_id']}: rolled_back ({error['message']})",
                          {"deployment_id": fields["deployment_id"], "error": error})

    async def _finish_probation(self) -> None:
        """A newer deploy commits the one in probation early, as the agent does."""
        task, self._probation = self._probation, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.deployment is not None and self.deployment["state"] == "active":
                await self._publish_deployment(**{**self.deployment, "state": "committed", "step": "committed"})

    async def _cancel_probation(self) -> None:
        task, self._probation = self._probation, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        await self._cancel_probation()
        await self.router.drain()

    # ----- telemetry ---------------------------------------------------------------------------
    async def telemetry_loop(self) -> None:
        await asyncio.sleep(self._random.uniform(0, self.spec.period_s))
        while True:
            await self.publish_telemetry()
            await asyncio.sleep(self.spec.period_s)

    async def publish_telemetry(self) -> None:
        uptime = time.time() - self.started_at
        fps = BASE_FPS * (0.95 + 0.05 * self._random.random())
        frames = int(BASE_FPS * uptime)
        snapshot = self._latency(fps)
        await self.telemetry.publish(self.topics.telemetry("latency"), self.telemetry.latency(
            snapshot, frames, frames // 200, cameras={SIM_CAMERA: (snapshot, frames // 200)}))
        await self.telemetry.publish(self.topics.telemetry("health"), self.telemetry.health(
            uptime_s=round(uptime, 1), camera={"state": "running", "reopens": 0, "last_error": None, "fps": fps},
            broker={"state": "connected", "reconnects": 0},
            model={"name": self.current.name, "version": self.current.version, "runtime": SIM_RUNTIME},
            cpu_percent=round(40 + 20 * self._random.random(), 1), memory_rss_bytes=RSS_BYTES,
            memory_available_bytes=MEMORY_AVAILABLE_BYTES, temperatures_c={}, gpu_load=None,
            disk_free_bytes=DISK_FREE_BYTES, outbox_depth=0, frames_processed=frames,
            cameras=[{"name": SIM_CAMERA, "state": "open", "reopens": 0, "last_error": None, "fps": fps,
                      "inferred_fps": fps, "frames_captured": frames, "frames_overwritten": 0,
                      "frames_inferred": frames, "errors": 0}]))
        for kind, document in (("drift", self._drift()), ("bias", self._bias()), ("leak", self._leak())):
            envelope = self.telemetry.envelope(f"telemetry/{kind}")
            await self._session.publish(self.topics.telemetry(kind),
                                                  json.dumps({**envelope, **document}).encode(), qos=1)
        if self.alarmed and not self._alarm_sent:
            self._alarm_sent = True
            message = f"drift brightness: ok -> alarm (psi {DRIFT_ALARM_PSI}, bound {DRIFT_ALARM_BOUND})"
            await self._event("alarm_raised", "alarm", message,
                              {"signal": "drift", "metric": "brightness", "measure": "psi", "previous": "ok",
                               "state": "alarm", "value": DRIFT_ALARM_PSI, "threshold": DRIFT_ALARM_BOUND})

    def _latency(self, fps: float) -> LatencySnapshot:
        p50 = self._latency_ms * (1.0 + 0.1 * self._random.random())
        stages = {"end_to_end": _stage(p50)}
        stages.update({name: _stage(p50 * share) for name, share in STAGE_SHARES.items()})
        return LatencySnapshot(window_frames=WINDOW_FRAMES, fps=round(fps, 2), frames_processed=0, stages=stages)

    def _drift(self) -> dict[str, Any]:
        psi = DRIFT_ALARM_PSI if self.alarmed else DRIFT_OK_PSI * (1 + self._random.random())
        state = "alarm" if self.alarmed else "ok"
        return {"version": self.current.version,
                "reference": {"model": self.current.name, "version": self.current.version, "samples": 500},
                "window": WINDOW_FRAMES, "samples": WINDOW_FRAMES,
                "metrics": {"brightness": {"state": state, "samples": WINDOW_FRAMES, "psi": round(psi, 4),
                                           "js": round(psi / 3, 4), "mean": 121.0, "reference_mean": 118.5},
                            "confidence": {"state": "ok", "samples": WINDOW_FRAMES, "psi": 0.02, "js": 0.01,
                                           "mean": 0.81, "reference_mean": 0.8}}}

    def _bias(self) -> dict[str, Any]:
        return {"window": WINDOW_FRAMES, "samples": WINDOW_FRAMES,
                "slicings": {"brightness_band": {"state": "ok", "selection_rate": {"max_difference": 0.04,
                                                                                   "min_ratio": 0.93}}}}

    def _leak(self) -> dict[str, Any]:
        return {"samples": 60, "resources": {"rss": {"unit": "MB", "value": RSS_BYTES / 1e6, "state": "ok",
                                                     "slope_per_hour": 0.1, "bound_per_hour": 50.0}}}


def _stage(p50: float) -> StageStats:
    return StageStats(p50_ms=round(p50, 3), p95_ms=round(p50 * 1.4, 3), p99_ms=round(p50 * 1.8, 3),
                      max_ms=round(p50 * 2.5, 3), count=WINDOW_FRAMES)


@dataclass(frozen=True)
class _Serving:
    """What ``Telemetry.model()`` reads from a serving engine."""

    model: SimModel

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def sha256(self) -> str:
        return self.model.sha256

    @property
    def runtime(self) -> str:
        return SIM_RUNTIME

    @property
    def since(self) -> float:
        return self.model.since
