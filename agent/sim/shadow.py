"""A simulated agent's shadow deploy: state ``shadow`` with a report, then promoted or discarded.

It goes as the agent's does (agent.models.shadow_run), with made-up figures: the report's
agreement is the spec's ``shadow_agreement``, 0 on a device that fails the version with
``fail_mode`` shadow; the terms a deploy leaves out are the agent's ``[deploy]`` defaults
(agent.core.DeploySection). After the spec's ``shadow_s`` (or the deploy's ``duration_s`` when
shorter) the run is decided: promoted at once, or, with ``auto_promote`` off, once a ``promote``
command comes within the duration; otherwise discarded, with the deployment ``discarded`` and
its event. The device (agent.sim.device) runs it between its deploy's steps and the swap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent.core import DeploySection
from agent.sim.errors import SimCommandFailed
from agent.sim.telemetry import SIM_CAMERA
from agent.wire import DeployCommand, DeploymentState, DeploymentStep, Severity

if TYPE_CHECKING:
    from agent.sim.spec import SimSpec

__all__ = ["SHADOW_DEFAULTS", "SHADOW_PROGRESS", "SimShadow", "shadow_report"]

SIM_DETECTIONS = 6.0
"""Detections per frame a simulated shadow report names for both models."""
SHADOW_PROGRESS = 0.9
"""A deployment's progress while in shadow, as the agent reports it."""
SHADOW_DEFAULTS = DeploySection()
"""The agent's ``[deploy] shadow_*`` defaults: the terms a shadow deploy leaves out."""

PublishDeployment = Callable[..., Awaitable[None]]
"""The device's retained ``deployment`` state, published from its fields."""
SendEvent = Callable[[str, Severity, str, dict[str, Any]], Awaitable[None]]


class SimShadow:
    """One simulated device's shadow run (``run``), and the ``promote`` it may wait for."""

    def __init__(self, spec: SimSpec, publish_deployment: PublishDeployment, event: SendEvent) -> None:
        self.spec = spec
        self._publish_deployment = publish_deployment
        self._event = event
        self._promote: asyncio.Event | None = None
        """Set by a ``promote`` command while a shadow run that waits for one is ready."""
        self._ready = False

    async def run(self, command: DeployCommand, fields: dict[str, Any], disagrees: bool) -> dict[str, Any]:
        """The shadow run: its report once decided, to be promoted; raises SimCommandFailed when discarded."""
        terms = command.shadow
        min_agreement = SHADOW_DEFAULTS.shadow_min_agreement
        min_frames = SHADOW_DEFAULTS.shadow_min_frames
        duration_s = SHADOW_DEFAULTS.shadow_duration_s
        auto_promote = SHADOW_DEFAULTS.shadow_auto_promote
        if terms is not None:
            min_agreement = min_agreement if terms.min_agreement is None else terms.min_agreement
            min_frames = min_frames if terms.min_frames is None else terms.min_frames
            duration_s = duration_s if terms.duration_s is None else terms.duration_s
            auto_promote = auto_promote if terms.auto_promote is None else terms.auto_promote
        agreement = 0.0 if disagrees else self.spec.shadow_agreement
        report = shadow_report(command.version, min_frames, agreement)
        await self._publish_deployment(**fields, state=DeploymentState.SHADOW, step=DeploymentStep.SHADOW,
                                       progress=SHADOW_PROGRESS, error=None,
                                       shadow=shadow_report(command.version, 0, None))
        started = time.monotonic()
        await asyncio.sleep(min(self.spec.shadow_s, duration_s))
        reason = None
        if agreement < min_agreement:
            reason = f"agreement {agreement:.3f} over {min_frames} frames is below the bound {min_agreement}"
        elif not auto_promote:
            self._promote, self._ready = asyncio.Event(), True
            await self._publish_deployment(**fields, state=DeploymentState.SHADOW, step=DeploymentStep.SHADOW,
                                           progress=SHADOW_PROGRESS, error=None, shadow=report)
            try:
                await asyncio.wait_for(self._promote.wait(), max(0.0, duration_s - (time.monotonic() - started)))
            except TimeoutError:
                reason = f"the bound was met but no promote command came within the shadow's {duration_s:g} s"
            finally:
                self._promote, self._ready = None, False
        data = {**fields, "shadow": report}
        if reason is None:
            await self._event("shadow_promoted", "info", f"{command.name} {command.version} agreed in shadow: "
                              f"promoted", data)
            return report
        error = {"code": "shadow_discarded", "message": reason}
        await self._publish_deployment(**fields, state=DeploymentState.DISCARDED, step=DeploymentStep.SHADOW,
                                       progress=SHADOW_PROGRESS, error=error, shadow=report)
        await self._event("shadow_discarded", "warning", f"{command.name} {command.version} discarded in shadow: "
                          f"{reason}", data)
        raise SimCommandFailed("shadow_discarded", f"shadow: {reason}",
                               {"deployment_id": command.id, "step": DeploymentStep.SHADOW, "shadow": report})

    def promote(self) -> None:
        """A ``promote`` command: the waiting run's candidate is to serve; ``not_ready`` when no run waits
        for one with its bound met."""
        if self._promote is None or not self._ready:
            raise SimCommandFailed("not_ready", "the shadow run cannot be promoted: pending")
        self._promote.set()


def shadow_report(candidate: str, frames: int, agreement: float | None) -> dict[str, Any]:
    """A shadow report of the agent's shape (docs/mqtt.md, ``deployment.shadow``) for the one camera."""
    camera = {"frames": frames, "agreement": agreement, "detections_per_frame": SIM_DETECTIONS,
              "serving_detections_per_frame": SIM_DETECTIONS, "detections_difference": 0.0,
              "score_js": None if agreement is None else round(1.0 - agreement, 4), "latency_ratio": 1.0,
              "skipped": 0, "text": None}
    return {"candidate": candidate, "frames": frames, "agreement": agreement, "text": None,
            "cameras": {SIM_CAMERA: camera}}
