"""The drift, bias and leak signals of a running agent: monitors fed by the frame worker,
published on their own timers, alarms turned into events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .config import AgentConfig
from .monitor.bias import BiasMonitor
from .monitor.drift import DriftMonitor
from .monitor.egress import EgressGuard
from .monitor.features import Monitors
from .monitor.leak import LeakMonitor
from .monitor.telemetry import Telemetry
from .mqtt.schema import PAYLOADS
from .mqtt.signals import BiasPayload, DriftPayload, FeedbackCommand, LeakPayload
from .runtime.cuda import device_memory
from .runtime.slot import Serving

__all__ = ["Signals"]

Event = Callable[[str, str, str, dict[str, Any]], Awaitable[None]]


class Signals:
    def __init__(self, config: AgentConfig, telemetry: Telemetry, event: Event) -> None:
        section = config.monitor
        self.section = section
        self.telemetry = telemetry
        self.event = event
        self.egress = EgressGuard.from_settings(PAYLOADS, section)
        self.drift = DriftMonitor.from_settings(section, reference=None)
        self.bias = BiasMonitor.from_settings(section, slices=None)
        self.leak = LeakMonitor.from_settings(section, device_reader=device_memory, egress=self.egress)
        self.observer = Monitors([self.drift, self.bias])
        telemetry.egress = self.egress

    def serving(self, serving: Serving, swapped: bool) -> None:
        """A model starts serving: its reference and slices apply from now on."""
        manifest = serving.manifest
        self.drift.set_reference(manifest.reference, serving.version)
        self.bias.set_slices(manifest.slices)
        if swapped:
            self.leak.on_swap()

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
