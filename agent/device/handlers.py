"""What each command does: ping, status, deploy, promote, rollback, feedback, cameras."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agent.core import DeploySection
from agent.device.commands import CommandFailed
from agent.device.monitors import Signals
from agent.models import (
    BehaviourBounds,
    DeployFailed,
    DeploymentManager,
    DeploymentStatus,
    DeployRequest,
    ModelStore,
    Probation,
    ShadowError,
    ShadowSpec,
)
from agent.results import SecondStages
from agent.runtime import EngineSlot
from agent.vision import CameraError, CameraSet, Pipeline, camera_entry, described, first_frame_error
from agent.wire import (
    CamerasCommand,
    DeployCommand,
    DeploymentState,
    FeedbackCommand,
    PingCommand,
    PromoteCommand,
    RollbackCommand,
    ShadowOptions,
    StatusCommand,
)

__all__ = ["CommandHandlers"]

V = TypeVar("V")


def _given(value: V | None, default: V) -> V:
    """The command's own value, or the config's when it gave none."""
    return default if value is None else value


class CommandHandlers:
    """The handler of each command name (``table``), given the parts of the agent they act on.

    Given the model's name, the slot, the store, the deployment manager, the second stages, the camera set (with
    callables that keep and publish a change to it), the monitors, the frame worker, and
    callables for the latest deployment and the health fields (both change while the agent runs).
    The router runs each handler as its own task; camera changes take one lock.
    """

    def __init__(self, *, model_name: str, slot: EngineSlot, store: ModelStore, manager: DeploymentManager,
                 second_stages: SecondStages, cameras: CameraSet, cameras_changed: Callable[[], None],
                 publish_cameras: Callable[[], Awaitable[None]], signals: Signals, pipeline: Pipeline,
                 deployment: Callable[[], DeploymentStatus | None],
                 health_fields: Callable[[], dict[str, Any]], deploy_settings: DeploySection) -> None:
        self.model_name = model_name
        self.slot = slot
        self.store = store
        self.manager = manager
        self.second_stages = second_stages
        self.camera_set = cameras
        self.cameras_changed = cameras_changed
        self.publish_cameras = publish_cameras
        self.signals = signals
        self.pipeline = pipeline
        self.deployment = deployment
        self.health_fields = health_fields
        self.deploy_settings = deploy_settings
        """``[deploy]``: the behavioural bounds a deploy's own are laid over."""
        self._cameras_lock = asyncio.Lock()
        """One camera change at a time: each reads the set the previous one left."""

    def table(self) -> dict[str, Any]:
        return {"ping": self.ping, "status": self.status, "deploy": self.deploy, "promote": self.promote,
                "rollback": self.rollback, "feedback": self.feedback, "cameras": self.cameras}

    async def cameras(self, command: CamerasCommand) -> dict[str, Any]:
        """Add, update, remove or list cameras; a change is kept in the state folder and published
        (retained ``cameras``). An added or updated camera must deliver a frame, else the change is
        undone and answered ``camera_unavailable``."""
        cameras = self.camera_set
        async with self._cameras_lock:
            if command.action == "list":
                return {"cameras": described(cameras)}
            if command.action == "remove":
                assert command.name is not None
                await asyncio.to_thread(cameras.remove, command.name)
                name = command.name
            else:
                assert command.camera is not None
                entry = camera_entry(command.camera)
                name = entry.name
                before = cameras.config(name)
                change = cameras.add if command.action == "add" else cameras.update
                await asyncio.to_thread(change, entry)
                error = await first_frame_error(cameras, entry)
                if error is not None:
                    undo = (lambda: cameras.remove(name)) if before is None else (lambda: cameras.update(before))
                    await asyncio.to_thread(undo)
                    raise CameraError("camera_unavailable", f"{error}; nothing was changed")
            self.cameras_changed()
        await self.publish_cameras()
        return {"action": command.action, "camera": name, "cameras": [c.name for c in cameras.configs()]}

    async def feedback(self, command: FeedbackCommand) -> dict[str, Any]:
        """Labels for recent frames (ids from ``status`` and the latency payload's ``last_frame_id``)."""
        return self.signals.feedback(command)

    async def ping(self, command: PingCommand) -> dict[str, Any]:
        return {"pong": True}

    async def status(self, command: StatusCommand) -> dict[str, Any]:
        serving = self.slot.serving
        store = self.store
        name = self.model_name
        deployment = self.deployment()
        last = self.pipeline.last_result
        return {
            "model": {"name": serving.name, "version": serving.version, "runtime": serving.runtime}
            if serving else None,
            "store": {"current": store.current_version(name), "previous": store.previous_version(name),
                      "versions": store.versions(name)},
            "deployment": None if deployment is None else {
                "deployment_id": deployment.deployment_id, "version": deployment.version,
                "state": deployment.state.value, "step": deployment.step.value,
            },
            "second_stages": {stage: self._second_stage(stage) for stage in sorted(self.second_stages.slots)},
            "health": self.health_fields(),
            "last_frame_id": last.frame.index if last else None,
            "last_frame_camera": last.camera if last else None,
        }

    def _second_stage(self, name: str) -> dict[str, Any]:
        serving = self.second_stages.slot(name).serving
        store = self.store
        return {"version": None if serving is None else serving.version, "current": store.current_version(name),
                "previous": store.previous_version(name), "versions": store.versions(name)}

    def _probation(self, command: DeployCommand) -> Probation | None:
        if command.probation is None:
            return None
        base = self.manager.default_probation()
        spec = command.probation
        behaviour = base.behaviour
        if spec.behaviour is not None:
            try:
                behaviour = BehaviourBounds.from_settings(self.deploy_settings, **spec.behaviour.model_dump())
            except ValueError as exc:  # a deploy's bound that does not fit the config's others
                raise CommandFailed("invalid_probation", str(exc)) from exc
        return Probation(spec.window_s, spec.max_error_rate, base.max_nonfinite, spec.max_latency_ratio,
                         base.min_frames, behaviour)

    def _shadow(self, command: DeployCommand) -> tuple[ShadowSpec | None, float]:
        """A shadow deploy's terms, the deploy's own over ``[deploy] shadow_*``; (None, 0) for a swap."""
        if command.mode != "shadow":
            return None, 0.0
        s = self.deploy_settings
        own = command.shadow or ShadowOptions()
        try:
            spec = ShadowSpec(
                min_agreement=_given(own.min_agreement, s.shadow_min_agreement),
                min_frames=_given(own.min_frames, s.shadow_min_frames),
                every_nth=_given(own.budget, s.shadow_every_nth),
                auto_promote=_given(own.auto_promote, s.shadow_auto_promote),
                min_text_agreement=_given(own.min_text_agreement, s.shadow_min_text_agreement))
        except ShadowError as exc:
            raise CommandFailed(exc.code, exc.message) from exc
        return spec, _given(own.duration_s, s.shadow_duration_s)

    async def deploy(self, command: DeployCommand) -> dict[str, Any]:
        manager = self.manager
        shadow, duration_s = self._shadow(command)
        request = DeployRequest(
            name=command.name, version=command.version, url=command.url, sha256=command.sha256,
            signature=command.signature, format=command.format, probation=self._probation(command),
            deployment_id=command.id,
            statement=command.statement.model_dump() if command.statement else None,
            shadow=shadow, shadow_duration_s=duration_s,
        )
        try:
            serving = await manager.deploy(request)
        except DeployFailed as exc:
            result: dict[str, Any] = {"deployment_id": request.deployment_id, "step": exc.step.value}
            report = manager.shadow_report(request.deployment_id)
            if report is not None:
                result["shadow"] = report
            raise CommandFailed(exc.code, f"{exc.step.value}: {exc.message}", result) from exc
        answer: dict[str, Any] = {"deployment_id": request.deployment_id, "name": serving.name,
                                  "version": serving.version, "state": DeploymentState.ACTIVE,
                                  "stage": manager.target.role}
        if shadow is not None:
            answer["shadow"] = manager.shadow_report(request.deployment_id)
        return answer

    async def promote(self, command: PromoteCommand) -> dict[str, Any]:
        """Serve the candidate of the shadow run waiting for a promote (its bound met)."""
        try:
            serving = await self.manager.promote()
        except DeployFailed as exc:
            raise CommandFailed(exc.code, exc.message) from exc
        return {"name": serving.name, "version": serving.version, "state": DeploymentState.ACTIVE,
                "stage": self.manager.target.role}

    async def rollback(self, command: RollbackCommand) -> dict[str, Any]:
        manager = self.manager
        try:
            serving = await manager.rollback(command.reason or "rollback command", command.name)
        except DeployFailed as exc:
            raise CommandFailed(exc.code, exc.message) from exc
        return {"name": serving.name, "version": serving.version}
