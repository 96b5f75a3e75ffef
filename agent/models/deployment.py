"""What a deployment is to the manager and its callers: the request, the status it reports, the failure.

``DeployRequest`` is one deploy command as the manager takes it (agent.device.handlers builds it
from the wire's ``DeployCommand``); ``DeploymentStatus`` is what the manager publishes at each step
(the retained ``deployment`` topic); ``DeployFailed`` ends a deployment at a step with a code,
the old model still serving. The callables the manager is given (``Report``, ``Event``,
``SecondStageTargets``) and the ones it hands its parts (``StepReport``, ``InLoader``) are named here
too, so that the manager (agent.models.manager), its candidate's preparation
(agent.models.candidate) and its shadow runs (agent.models.shadow_run) share one vocabulary.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agent.core import CodedError
from agent.models.errors import ModelError
from agent.models.probation import Probation
from agent.models.shadow import ShadowSpec
from agent.models.target import DeployTarget
from agent.wire import DeploymentState, DeploymentStep, Severity

__all__ = [
    "DeployFailed",
    "DeployRequest",
    "DeploymentStatus",
    "Event",
    "InLoader",
    "Report",
    "SecondStageTargets",
    "StepReport",
]

T = TypeVar("T")


class DeployFailed(ModelError, CodedError):
    """A deployment step failed; the old model keeps serving. ``code`` and ``message`` are the deployment's error."""

    def __init__(self, step: DeploymentStep, code: str, message: str) -> None:
        super().__init__(code, message)
        self.step = step

    def __str__(self) -> str:
        return f"{self.step.value}: {self.message}"


@dataclass(frozen=True)
class DeployRequest:
    """One deploy as the manager runs it: what to fetch, how to check it, its probation and shadow terms."""

    name: str
    version: str
    url: str
    sha256: str
    signature: str | None = None
    format: str = "onnx"
    probation: Probation | None = None
    deployment_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    statement: Mapping[str, Any] | None = None
    """The signed statement (agent.models.fetch.Statement and its signature) the deploy carries."""
    shadow: ShadowSpec | None = None
    """A shadow deploy's terms: judged beside the serving model before it serves; None: swap at once."""
    shadow_duration_s: float = 0.0
    """The longest the shadow run lasts."""


@dataclass(frozen=True)
class DeploymentStatus:
    """Where a deployment stands, as the manager publishes it at each step (the ``deployment`` topic)."""

    deployment_id: str
    name: str
    version: str
    state: DeploymentState
    step: DeploymentStep
    progress: float
    error: dict[str, str] | None = None
    detail: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    """The deployment's shadow report, once it has one."""


Report = Callable[[DeploymentStatus], Awaitable[None]]
Event = Callable[[str, Severity, str, dict[str, Any]], Awaitable[None]]
SecondStageTargets = Callable[[], Mapping[str, DeployTarget]]
"""The second stages the cameras name now, by model name (agent.results.stages builds each)."""


class StepReport(Protocol):
    """Publishes that deployment ``req`` reached ``step`` at ``progress``, with ``detail`` (the manager's ``_step``)."""

    async def __call__(self, req: DeployRequest, step: DeploymentStep, progress: float, **detail: Any) -> None: ...


class InLoader(Protocol):
    """Runs ``fn(*args)`` on the manager's one low-priority ``model-loader`` thread and returns its result."""

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T: ...
