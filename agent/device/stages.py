"""The second stages in a running agent: which the cameras name, how the deployment manager reaches
them, what follows a swap of one, and loading one a camera names later.

The cameras' ``results.second_stage`` say which recognizers run (agent/results/stages.py holds
their slots). For the deployment manager each is a target by name (``targets``); a swap of one
republishes the retained ``model`` (its ``second_stages``) and sends an ``engine_swapped`` event
with ``"stage": "second"``. A camera added or changed by command that names one no slot serves
has the manager load its current version (``load_missing``), in a task beside the command. In a
shadow run of a recognizer the shadow observer asks which stage a camera names (``stage_of``) and
has the serving version and the candidate read the same crops (``read_pair``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import structlog

from agent.models import DeployFailed, DeploymentManager, DeployTarget, EngineOptions
from agent.results import ReadPair, SecondStages
from agent.runtime import Serving
from agent.vision import CameraSet, Detection
from agent.wire import ModelRef, Severity, StageModel

__all__ = ["StageBook"]

log = structlog.get_logger(__name__)

Event = Callable[[str, Severity, str, dict[str, Any] | None], Awaitable[None]]
Guarded = Callable[[str, Callable[[], Awaitable[None]]], Coroutine[Any, Any, bool]]


class StageBook:
    """The running agent's second stages beside its deployment manager.

    Given the second stages, the camera set (what the cameras name now), the recognizers' engine
    options, and the agent's ``publish_model``, ``event`` and ``guarded`` (the task boundary). It
    owns the version each stage served before its last swap, and the load tasks in flight."""

    def __init__(self, stages: SecondStages, cameras: CameraSet, options: EngineOptions,
                 publish_model: Callable[[], Awaitable[None]], event: Event, guarded: Guarded) -> None:
        self.stages = stages
        self.cameras = cameras
        self.options = options
        self.publish_model = publish_model
        self.event = event
        self.guarded = guarded
        self.previous: dict[str, ModelRef] = {}
        self._loads: set[asyncio.Task[bool]] = set()

    def named(self) -> set[str]:
        """The second stages the cameras name now."""
        return {c.results.second_stage for c in self.cameras.configs() if c.results.second_stage is not None}

    def stage_of(self, camera: str) -> str | None:
        """The second stage ``camera`` names now (None: none, or no such camera)."""
        config = self.cameras.config(camera)
        return None if config is None else config.results.second_stage

    def read_pair(self, camera: str, candidate: Serving, image: np.ndarray,
                  detections: Sequence[Detection]) -> ReadPair | None:
        """A shadow candidate of a second stage beside its serving version, on the same crops of a frame
        of ``camera`` (None: the camera names another stage, or nothing serves it)."""
        if self.stage_of(camera) != candidate.name:
            return None
        return self.stages.read_pair(candidate, camera, image, detections)

    def targets(self) -> dict[str, DeployTarget]:
        """The second stages the cameras name, as deployment targets (the manager's ``second_stages``)."""
        return {name: self.stages.target(name, self.options, self.swapped) for name in self.named()}

    def models(self) -> list[StageModel]:
        """The retained ``model``'s ``second_stages``: each one serving, with what served before."""
        models = []
        for name in sorted(self.stages.slots):
            serving = self.stages.slot(name).serving
            if serving is not None:
                models.append(StageModel(name=name, version=serving.version, sha256=serving.sha256,
                                         since=serving.since, previous=self.previous.get(name)))
        return models

    async def swapped(self, new: Serving, old: Serving | None, reason: str) -> None:
        if old is not None:
            self.previous[new.name] = ModelRef(name=old.name, version=old.version)
        await self.publish_model()
        await self.event("engine_swapped", "info", f"second stage now {new.name} {new.version} ({reason})",
                         {"model": new.name, "stage": "second", "from_version": old.version if old else None,
                          "to_version": new.version, "reason": reason})

    def load_missing(self, manager: DeploymentManager) -> None:
        """Have ``manager`` load each second stage the cameras name that no slot serves (a task)."""
        missing = [n for n in sorted(self.named()) if self.stages.serving(n) is None]
        if not missing:
            return
        task = asyncio.get_running_loop().create_task(
            self.guarded("second_stage_load", lambda: self._load(manager, missing)))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load(self, manager: DeploymentManager, names: list[str]) -> None:
        for name in names:
            try:
                await manager.serve_current(name)
            except DeployFailed as exc:
                log.warning("second_stage_unavailable", model=name, code=exc.code, error=exc.message)
                await self.event("second_stage_unavailable", "warning", f"second stage {name}: {exc.message}",
                                 {"model": name, "code": exc.code})

    def cancel(self) -> None:
        """Stop the loads in flight (the agent is stopping)."""
        for task in list(self._loads):
            task.cancel()
