"""The agent: wires capture, inference, MQTT and telemetry into one asyncio TaskGroup.

Start: load the store's ``current`` model (``previous`` when current does not
load), open the source, start the frame worker, connect to the broker, and tell
systemd READY=1 once the first frame is inferred. Run: telemetry on timers, the
watchdog fed from frame progress, commands from MQTT. Stop (SIGTERM/SIGINT):
STOPPING=1, finish the frame in flight, publish ``offline``, flush, exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import time

import structlog

from . import __version__
from .config import AgentConfig
from .log import bind_context
from .models.loader import EngineOptions, load_serving
from .models.store import ModelStore, StoreError
from .monitor.latency import LatencyRecorder
from .monitor.telemetry import Telemetry
from .mqtt.broker import EmbeddedBroker
from .mqtt.schema import ModelPayload, StatusPayload
from .mqtt.session import MqttSession
from .mqtt.topics import Topics
from .runtime.base import EngineError
from .runtime.select import select_runtime
from .runtime.slot import EngineSlot, Serving
from .systemd import Notifier, WatchdogFeeder
from .vision.pipeline import Pipeline
from .vision.sources import FrameSource

try:  # Python 3.10 (JetPack 6) has no asyncio.TaskGroup
    from asyncio import TaskGroup
except ImportError:  # pragma: no cover
    from taskgroup import TaskGroup  # type: ignore[no-redef]

__all__ = ["Agent", "StartupError"]

log = structlog.get_logger(__name__)

FIRST_FRAME_TIMEOUT_S = 120.0
"""READY=1 waits this long for the first inferred frame before giving up."""
WATCHDOG_MIN_PERIOD_S = 1.0


class StartupError(RuntimeError):
    """The agent cannot start: no loadable model, no source, no broker binary."""


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix, config.agent.device_id)
        self.store = ModelStore(config.store_dir, keep=config.model.keep_versions)
        self.slot = EngineSlot()
        self.recorder = LatencyRecorder(config.telemetry.latency_window)
        self.source = FrameSource(config.source)
        self.pipeline = Pipeline(self.source, self.slot, self.recorder)
        self.notifier = Notifier()
        self.started_at = time.time()
        self.engine_options = EngineOptions(
            runtime=select_runtime(config.model.runtime),
            threads=config.model.threads,
            providers=config.model.providers,
            fuse_preprocessing=config.model.fuse_preprocessing,
        )
        self.previous_model: dict[str, str] | None = None
        self._stop = asyncio.Event()
        self._broker: EmbeddedBroker | None = None
        self.session: MqttSession | None = None
        self.telemetry: Telemetry | None = None

    # ----- start -------------------------------------------------------------------------
    def load_initial(self) -> Serving:
        """The store's current model, or previous (reported) when current does not load."""
        name = self.config.model.name
        self.store.clean_partial()
        failures = []
        for which in ("current", "previous"):
            try:
                installed = self.store.current(name) if which == "current" else self.store.previous(name)
                serving = load_serving(installed, self.engine_options)
            except (StoreError, EngineError, ValueError) as exc:
                failures.append(f"{which}: {exc}")
                log.error("model_load_failed", model=name, which=which, error=str(exc))
                continue
            if which == "previous":
                self.store.activate(name, installed.version)
                log.warning("fell_back_to_previous", model=name, version=installed.version,
                            reason=failures[0])
            return serving
        raise StartupError(f"no loadable version of model {name!r}: " + "; ".join(failures))

    def _mqtt_url(self) -> str:
        mqtt = self.config.mqtt
        if mqtt.url != "embedded":
            return mqtt.url
        self._broker = EmbeddedBroker(mqtt.embedded_binary, port=mqtt.embedded_port)
        self._broker.start()
        log.info("embedded_broker_started", url=self._broker.url)
        return self._broker.url

    def status_payload(self, state: str) -> StatusPayload:
        return self.telemetry.status(state, started_at=self.started_at, groups=self.config.agent.groups)

    def model_payload(self) -> ModelPayload:
        serving = self.slot.serving
        assert serving is not None and self.telemetry is not None
        return self.telemetry.model(serving, previous=self.previous_model)

    async def _on_connect(self) -> None:
        """Birth: retained online status and serving model, on every (re)connect."""
        assert self.telemetry is not None
        await self.telemetry.publish_state(self.topics.status, self.status_payload("online"))
        await self.telemetry.publish_state(self.topics.model, self.model_payload())

    async def _on_message(self, topic: str, payload: bytes) -> None:
        log.debug("message_ignored", topic=topic, size=len(payload))

    # ----- run ---------------------------------------------------------------------------
    async def run(self) -> int:
        serving = self.load_initial()
        self.slot.swap(serving)
        bind_context(device_id=self.config.agent.device_id, model_version=serving.version)
        self.source.start()
        self.pipeline.start()
        url = self._mqtt_url()
        self.telemetry = Telemetry(self.topics, self.config.agent.device_id, __version__)
        self.session = MqttSession(
            self.config.mqtt,
            url=url,
            client_id=f"edge-agent-{self.config.agent.device_id}",
            will=(self.topics.status, self.telemetry.encode(self.status_payload("lost"))),
            subscriptions=self.topics.command_filters(self.config.agent.groups),
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self.telemetry.attach(self.session)
        self._install_signals()
        try:
            async with TaskGroup() as tasks:
                tasks.create_task(self.session.run(), name="mqtt")
                tasks.create_task(self._ready_when_first_frame(), name="ready")
                tasks.create_task(self._every(self.config.telemetry.latency_period_s, self._publish_latency))
                tasks.create_task(self._every(self.config.telemetry.health_period_s, self._publish_health))
                tasks.create_task(self._watchdog(), name="watchdog")
                await self._stop.wait()
                await self._shutdown()
        finally:
            if self._broker is not None:
                self._broker.stop()
        log.info("agent_stopped")
        return 0

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("agent_stopping", reason=reason)
            self._stop.set()

    async def _ready_when_first_frame(self) -> None:
        ready = await asyncio.to_thread(self.pipeline.first_frame.wait, FIRST_FRAME_TIMEOUT_S)
        if not ready:
            log.error("no_first_frame", timeout_s=FIRST_FRAME_TIMEOUT_S, source=self.source.stats().state.name)
            self.request_stop("no frame was inferred in time")
            return
        serving = self.slot.serving
        self.notifier.ready()
        self.notifier.status(f"serving {serving.name} {serving.version}" if serving else "serving")
        log.info("agent_ready", model=serving.name if serving else None)

    async def _every(self, period: float, action) -> None:  # type: ignore[no-untyped-def]
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=period)
            except asyncio.TimeoutError:
                await action()

    async def _publish_latency(self) -> None:
        assert self.telemetry is not None
        await self.telemetry.publish_latency(self.recorder.snapshot(), self.pipeline, self.source.stats())

    async def _publish_health(self) -> None:
        assert self.telemetry is not None
        await self.telemetry.publish_health(self)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        feeder = WatchdogFeeder(self.config.watchdog.stall_s)
        period = max(WATCHDOG_MIN_PERIOD_S, interval) if interval else 2.0
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=period)
            except asyncio.TimeoutError:
                pass
            if feeder.should_ping(self.pipeline.last_progress, time.monotonic()):
                if interval:
                    self.notifier.watchdog()
                snapshot = self.recorder.snapshot()
                serving = self.slot.serving
                if serving is not None:
                    self.notifier.status(f"serving {serving.name} {serving.version} at {snapshot.fps:.1f} fps")
            else:
                log.error("frame_loop_stalled", stalled_s=round(time.monotonic() - self.pipeline.last_progress, 1))

    # ----- stop --------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self.notifier.stopping()
        bound = self.config.agent.stop_timeout_s
        finished = await asyncio.to_thread(self.pipeline.stop, bound / 2)
        if not finished:
            log.warning("frame_worker_did_not_stop", timeout_s=bound / 2)
        await asyncio.to_thread(self.source.stop, bound / 4)
        assert self.session is not None and self.telemetry is not None
        try:
            await asyncio.wait_for(
                self.telemetry.publish_state(self.topics.status, self.status_payload("offline")),
                timeout=bound / 4,
            )
            await asyncio.wait_for(self.session.stop(), timeout=bound / 4)
        except asyncio.TimeoutError:
            log.warning("broker_flush_timed_out", timeout_s=bound / 4)
        self.slot.clear()



def run_agent(config: AgentConfig) -> int:
    return asyncio.run(Agent(config).run())
