"""The drift, bias and leak signals of a running agent: monitors fed by the frame worker,
published on their own timers, alarms turned into events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agent.core import AgentConfig
from agent.models import ManifestError, MonitorData, OutputWindow
from agent.monitor import BiasMonitor, DriftMonitor, EgressGuard, LeakMonitor, ResourceSampler, Telemetry
from agent.runtime import Serving, device_memory
from agent.vision import Monitors
from agent.wire import PAYLOADS, BiasPayload, DriftPayload, FeedbackCommand, LeakPayload, Severity

__all__ = ["Signals"]

log = structlog.get_logger(__name__)

Event = Callable[[str, Severity, str, dict[str, Any]], Awaitable[None]]
INVALID_DATA_EVENT = "monitor_data_invalid"


class Signals:
    """The monitors of a running agent; ``serving`` hands them a model and never raises."""

    def __init__(self, config: AgentConfig, telemetry: Telemetry, event: Event) -> None:
        section = config.monitor
        self.section = section
        self.telemetry = telemetry
        self.event = event
        self.egress = EgressGuard(PAYLOADS, section)
        self.drift = DriftMonitor(section)
        self.bias = BiasMonitor(section)
        self.leak = LeakMonitor(section, sampler=ResourceSampler(device_reader=device_memory), egress=self.egress)
        self.outputs = OutputWindow(config.deploy.behaviour_window)
        """What the models output, frame by frame, for behavioural probation."""
        self.observer = Monitors([self.drift, self.bias, self.outputs])
        self.failures = 0
        """Models whose monitor data could not be applied (each also an event)."""
        self._pending: list[tuple[str, Severity, str, dict[str, Any]]] = []
        telemetry.egress = self.egress

    def serving(self, serving: Serving, swapped: bool) -> None:
        """A model starts serving: its reference and slices apply from now on.

        A deployment parsed them while it validated (``Manifest.monitor_data``), so
        here they are only assigned. A model whose data is bad all the same (one
        installed by an agent that did not check it) serves with no reference and
        no extra slices, and an event says why: the monitors never stop a start.
        """
        try:
            data = serving.manifest.monitor_data()
        except ManifestError as exc:
            self._failed(serving, f"its manifest's monitor data is invalid: {exc}")
            data = MonitorData.empty()
        try:
            self.drift.set_reference(data.reference, serving.version)
            self.bias.set_slices(data.slices)
            if swapped:
                self.leak.on_swap()
        except Exception as exc:  # a monitor must never stop a model from serving
            self._failed(serving, f"the monitors could not take it: {type(exc).__name__}: {exc}")

    def _failed(self, serving: Serving, reason: str) -> None:
        self.failures += 1
        log.error(INVALID_DATA_EVENT, model=serving.name, version=serving.version, error=reason,
                  failures=self.failures)
        self._pending.append((INVALID_DATA_EVENT, "alarm",
                              f"{serving.name} {serving.version} serves without drift reference or slices: {reason}",
                              {"model": serving.name, "version": serving.version}))

    def timers(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        s = self.section
        return [(s.drift_period_s, self.publish_drift), (s.bias_period_s, self.publish_bias),
                (s.leak_sample_period_s, self.sample_leak), (s.leak_period_s, self.publish_leak)]

    async def _publish(self, model: type[Any], kind: str, monitor: Any) -> None:
        snapshot = monitor.snapshot()
        topic = self.telemetry.topics.telemetry(kind)
        await self.telemetry.publish(topic, self.telemetry.signal(model, f"telemetry/{kind}", snapshot))
        for event in monitor.take_events():
            await self.event(*event.as_event())
        pending, self._pending = self._pending, []
        for args in pending:
            await self.event(*args)

    async def publish_drift(self) -> None:
        await self._publish(DriftPayload, "drift", self.drift)

    async def publish_bias(self) -> None:
        await self._publish(BiasPayload, "bias", self.bias)

    async def publish_leak(self) -> None:
        await self._publish(LeakPayload, "leak", self.leak)

    async def sample_leak(self) -> None:
        self.leak.sample()

    def feedback(self, command: FeedbackCommand) -> dict[str, int]:
        return self.bias.apply(command)
