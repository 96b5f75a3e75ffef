"""The agent: wires capture, inference, MQTT, deployments and telemetry into one asyncio TaskGroup.

Start: load the store's ``current`` model (``previous`` when current does not
load), open the source, start the frame worker, connect to the broker, and tell
systemd READY=1 once the first frame is inferred. Run: telemetry on timers, the
watchdog fed from frame progress, commands from MQTT. Stop (SIGTERM/SIGINT):
STOPPING=1, finish the frame in flight, publish ``offline``, flush, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agent import __version__
from agent.core import AgentConfig, bind_context
from agent.device.cameras import CameraBook
from agent.device.commands import CommandJournal, CommandRouter, Outcome
from agent.device.handlers import CommandHandlers
from agent.device.health import DeviceHealth
from agent.device.liveness import Liveness
from agent.device.liveview import LiveView, LiveViewError
from agent.device.monitors import Signals
from agent.device.stages import StageBook
from agent.device.startup import (
    StartupError,
    camera_configs,
    check_crash_loop,
    command_authority,
    crash_loop_status,
    engine_options,
    load_initial,
)
from agent.device.systemd import Notifier, SystemdError
from agent.models import (
    BOOT_RECORD_FILE,
    CRASH_TEST_ENV,
    BootGuard,
    CrashLoop,
    DeploymentManager,
    DeploymentStatus,
    ModelStore,
    load_public_key,
)
from agent.monitor import LatencyRecorder, Telemetry
from agent.mqtt import (
    EmbeddedBroker,
    MqttSession,
    OutboxError,
    SessionConfigError,
    SqliteOutbox,
    check_certificate_identity,
)
from agent.results import ResultsPublisher, SecondStages, second_stage_options
from agent.runtime import EngineSlot, Serving
from agent.vision import CAMERAS_FILE, CameraError, CameraSet, Pipeline, Scheduler, ShadowRunner, shadow_session_options
from agent.wire import CommandError, DeploymentState, DeviceState, Severity, StatusPayload, Topics

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover  Python 3.10 (JetPack 6) has no asyncio.TaskGroup
    from taskgroup import TaskGroup

__all__ = ["Agent", "StartupError", "run_agent"]

log = structlog.get_logger(__name__)

JOURNAL_FILE = "commands.json"
OUTBOX_FILE = "outbox.sqlite3"
RETAINED_KEYS = ("status", "model", "deployment", "cameras")
"""Retained topics: not queued in the outbox, so their sequence numbers are saved at once."""


class Agent:
    """One device's agent: builds every part from the config, runs them in one TaskGroup, stops them in order.

    Given only the ``AgentConfig``. It owns the model store, the engine slot, the camera set (with
    its bookkeeping, ``camera_book``), the frame worker (``pipeline``) and its observers (the
    monitors, the results publisher, the live view), the outbox, the telemetry, the boot guard,
    and, once ``run`` starts, the deployment manager, the command router and the MQTT session
    (and the embedded broker when the config asks for one). Threads: each camera's capture, the
    frame worker, the live view's server, the manager's downloads and builds. Tasks in the
    TaskGroup: the MQTT session, the ready wait (READY=1, then ``on_ready``), the health, latency
    and monitor timers, the systemd watchdog (``liveness``), the results publisher, and one-off
    reports of a fallback or a crash loop; each runs behind ``guarded``, so a failure is logged
    and counted in health, never raised into the group.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_id = config.agent.device_id
        self.topics = Topics(config.mqtt.prefix, self.device_id)
        try:
            check_certificate_identity(config.mqtt, self.device_id)
        except SessionConfigError as exc:
            raise StartupError(str(exc)) from exc
        self.store = ModelStore(config.store_dir, keep=config.model.keep_versions)
        self.slot = EngineSlot()
        self.recorder = LatencyRecorder(config.telemetry.latency_window)
        cameras_file = config.agent.state_dir / CAMERAS_FILE
        if config.uses_source_section:
            log.warning("config_source_deprecated", camera=config.source.name,
                        hint="write the camera as a [[camera]] entry with a name (docs/cameras.md)")
        configs, cameras_source = camera_configs(config, cameras_file)
        try:
            self.cameras = CameraSet(configs, config.model.name)
        except CameraError as exc:
            raise StartupError(exc.message) from exc
        self.pipeline = Pipeline(Scheduler(self.cameras), self.slot, self.recorder)
        try:
            self.notifier = Notifier()
        except SystemdError as exc:
            raise StartupError(str(exc)) from exc
        try:
            mqtt = config.mqtt
            self.outbox = SqliteOutbox(config.agent.state_dir / OUTBOX_FILE,
                                       mqtt.outbox_max_messages, mqtt.outbox_max_age_s)
        except OutboxError as exc:
            raise StartupError(str(exc)) from exc
        self.telemetry = Telemetry(self.topics, self.device_id, __version__,
                                   sequencer=self.outbox.sequencer(immediate=RETAINED_KEYS))
        self.camera_book = CameraBook(self.cameras, cameras_file, cameras_source, self.pipeline.cameras,
                                      self.telemetry, self.topics)
        self.signals = Signals(config, self.telemetry, self.event)
        self.pipeline.observers.append(self.signals.observer)
        results_settings = self.camera_book.results_settings
        self.second_stages = SecondStages()
        self.results = ResultsPublisher(self.telemetry, self.topics, results_settings, config.agent.state_dir,
                                        second_stages=self.second_stages)
        self.pipeline.observers.append(self.results.observe)
        self.live_view: LiveView | None = None
        if config.live_view.enabled:
            try:
                self.live_view = LiveView(config.live_view, lambda: [c.name for c in self.cameras.active()],
                                          results_settings, self.results.tracks)
            except LiveViewError as exc:
                raise StartupError(str(exc)) from exc
            self.pipeline.observers.append(self.live_view.observe)
        self.started_at = time.time()
        self.engine_options = engine_options(config.model)
        self.previous_model: dict[str, str] | None = None
        self.stage_book = StageBook(self.second_stages, self.cameras, second_stage_options(self.engine_options),
                                    self.publish_model, self.event, self.guarded)
        self.fallback_reason: str | None = None
        self.deployment: DeploymentStatus | None = None
        self._stop = asyncio.Event()
        self._broker: EmbeddedBroker | None = None
        self.session: MqttSession | None = None
        self.manager: DeploymentManager | None = None
        self.router: CommandRouter | None = None
        self.bootguard = BootGuard(config.agent.state_dir / BOOT_RECORD_FILE, config.agent.crash_loop_starts,
                                   config.agent.crash_loop_window_s)
        self.crash_loop: CrashLoop | None = None
        self._stopped_by_signal = False
        self.task_failures: dict[str, int] = {}
        """Failures caught at a task's boundary, by task name (in health as ``task_failures``)."""
        self.health = DeviceHealth(
            telemetry=self.telemetry, topics=self.topics, cameras=self.cameras, pipeline=self.pipeline,
            slot=self.slot, outbox=self.outbox, results=self.results, store_root=self.store.root,
            started_at=self.started_at, task_failures=self.task_failures, session=lambda: self.session)
        self.liveness = Liveness(self.notifier, self.cameras, self.pipeline, self.slot, self.bootguard,
                                 config.watchdog.stall_s)
        self.on_ready: Callable[[Agent], None] | None = None
        """Called once after READY=1 (the CLI prints a summary on a terminal); its failure is logged."""

    @property
    def broker_url(self) -> str:
        """The broker the agent talks to: the embedded one's loopback URL once it runs."""
        return self._broker.url if self._broker is not None and self._broker.running else self.config.mqtt.url

    def health_fields(self) -> dict[str, Any]:
        """The health payload's fields now (``status`` answers with them too)."""
        return self.health.fields()

    # ----- start -------------------------------------------------------------------------
    def _mqtt_url(self) -> str:
        mqtt = self.config.mqtt
        if mqtt.url != "embedded":
            return mqtt.url
        self._broker = EmbeddedBroker(mqtt.embedded_binary, port=mqtt.embedded_port,
                                      credentials_dir=self.config.agent.state_dir)
        self._broker.start()
        return self._broker.url

    def status_payload(self, state: DeviceState) -> StatusPayload:
        return self.telemetry.status(state, started_at=self.started_at, groups=self.config.agent.groups)

    async def _on_connect(self) -> None:
        """Birth, on every (re)connect: retained online status, serving model, latest deployment."""
        await self.telemetry.publish_state(self.topics.status, self.status_payload(DeviceState.ONLINE))
        await self.publish_model()
        await self.camera_book.publish()
        if self.deployment is not None:
            await self.publish_deployment(self.deployment)

    async def publish_model(self) -> None:
        serving = self.slot.serving
        if serving is not None:
            await self.telemetry.publish_state(self.topics.model, self.telemetry.model(
                serving, self.previous_model, self.stage_book.models()))

    async def publish_deployment(self, status: DeploymentStatus) -> None:
        self.deployment = status
        payload = self.telemetry.deployment(
            deployment_id=status.deployment_id, name=status.name, version=status.version,
            state=status.state.value, step=status.step.value, progress=status.progress,
            error=status.error, shadow=status.shadow,
        )
        await self.telemetry.publish_state(self.topics.deployment, payload)
        if status.state in DeploymentState.FINAL:
            severity: Severity = "info" if status.state is DeploymentState.COMMITTED else "warning"
            message = f"deployment {status.deployment_id} of {status.name} {status.version}: {status.state.value}"
            if status.error:
                message += f" ({status.error['message']})"
            await self.event(f"deployment_{status.state.value}", severity, message,
                             {"deployment_id": status.deployment_id, "step": status.step.value,
                              "error": status.error, **(status.detail or {})})

    async def event(self, kind: str, severity: Severity, message: str, data: dict[str, Any] | None = None) -> None:
        await self.telemetry.publish(self.topics.events, self.telemetry.event(kind, severity, message, data))

    async def _swapped(self, new: Serving, old: Serving | None, reason: str) -> None:
        self.bootguard.swapped(new.version)
        self.signals.serving(new, swapped=True)
        self.previous_model = {"name": old.name, "version": old.version} if old else None
        bind_context(device_id=self.device_id, model_version=new.version)
        await self.publish_model()
        await self.event("engine_swapped", "info", f"now serving {new.name} {new.version} ({reason})",
                         {"model": new.name, "stage": "first", "from_version": old.version if old else None,
                          "to_version": new.version, "reason": reason})

    def _cameras_changed(self) -> None:
        """Keep the camera set; a second stage a camera now names and no slot serves is loaded."""
        self.camera_book.changed()
        assert self.manager is not None
        self.stage_book.load_missing(self.manager)

    async def _reply(self, command_id: str | None, outcome: Outcome) -> None:
        payload = self.telemetry.reply(command_id, outcome.command, outcome.ok, outcome.error, outcome.result)
        await self.telemetry.publish(self.topics.reply, payload)

    async def _rejected(self, name: str, error: CommandError) -> None:
        await self.event("command_rejected", "warning", f"command {name!r} rejected: {error.message}",
                         {"command": name, "code": error.code})

    def _build_control(self) -> None:
        deploy = self.config.deploy
        public_key = load_public_key(deploy.public_key_file) if deploy.public_key_file else None
        self.manager = DeploymentManager(
            store=self.store, slot=self.slot, options=self.engine_options, settings=deploy,
            public_key=public_key, feeds_for=self.pipeline.feeds_for, stats=self.pipeline.counters.stats,
            report=self.publish_deployment, swapped=self._swapped, outputs=self.signals.outputs,
            event=self.event, second_stages=self.stage_book.targets,
        )
        capped = shadow_session_options(self.manager.load_options, deploy.shadow_threads)
        self.pipeline.observers.append(ShadowRunner(self.manager.shadow, self.manager.run_beside,
                                                   deploy.load_nice or None, read=self.results.read_beside,
                                                   capped=capped, second=self.stage_book))
        handlers = CommandHandlers(
            model_name=self.config.model.name, slot=self.slot, store=self.store, manager=self.manager,
            second_stages=self.second_stages,
            cameras=self.cameras, cameras_changed=self._cameras_changed, publish_cameras=self.camera_book.publish,
            signals=self.signals, pipeline=self.pipeline, deployment=lambda: self.deployment,
            health_fields=self.health_fields, deploy_settings=self.config.deploy)
        journal = CommandJournal(self.config.agent.state_dir / JOURNAL_FILE, deploy.journal_size)
        self.router = CommandRouter(self.topics, journal, handlers.table(), self._reply,
                                    self._rejected, command_authority(self.config))

    # ----- run ---------------------------------------------------------------------------
    async def run(self) -> int:
        name = self.config.model.name
        self.crash_loop = check_crash_loop(self.bootguard, self.store, name)
        serving, self.fallback_reason = load_initial(self.store, name, self.engine_options)
        self.bootguard.started(serving.version)
        if os.environ.get(CRASH_TEST_ENV) == serving.version:  # test-only fault: see CRASH_TEST_ENV
            log.critical("test_crash_injected", version=serving.version)
            os.abort()
        crash_loop = crash_loop_status(self.crash_loop, serving, self.started_at)
        self.slot.swap(serving)
        self.second_stages.load(self.store, self.stage_book.named(), self.stage_book.options)
        self.signals.serving(serving, swapped=False)
        bind_context(device_id=self.device_id, model_version=serving.version)
        self._build_control()
        assert self.router is not None
        self.cameras.start()
        self.pipeline.start()
        self._start_live_view()
        url = self._mqtt_url()
        settings = self._broker.session_settings(self.config.mqtt) if self._broker else self.config.mqtt
        self.session = MqttSession(
            settings, url=url, client_id=f"edge-agent-{self.device_id}",
            will=(self.topics.status, self.telemetry.encode(self.status_payload(DeviceState.LOST))),
            subscriptions=self.topics.command_filters(self.config.agent.groups),
            on_message=self.router.on_message, on_connect=self._on_connect, outbox=self.outbox,
        )
        self.telemetry.attach(self.session)
        self._install_signals()
        try:
            async with TaskGroup() as tasks:
                tasks.create_task(self.session.run(), name="mqtt")
                tasks.create_task(self.guarded("ready", self._ready_when_first_frame), name="ready")
                tasks.create_task(self._every(self.config.telemetry.latency_period_s, self.health.publish_latency))
                tasks.create_task(self._every(self.config.telemetry.health_period_s, self.health.publish_health))
                tasks.create_task(self.liveness.watch(self._stop, self.guarded), name="watchdog")
                tasks.create_task(self.guarded("results", self.results.run), name="results")
                for period, action in self.signals.timers():
                    tasks.create_task(self._every(period, action))
                if self.fallback_reason:
                    tasks.create_task(self.guarded("fallback_event", self._report_fallback))
                if crash_loop is not None:
                    tasks.create_task(self.guarded("crash_loop_report",
                                                    lambda: self.publish_deployment(crash_loop)))
                await self._stop.wait()
                await self._shutdown()
            if self._stopped_by_signal:
                self.bootguard.stopped()
        finally:
            if self._broker is not None:
                self._broker.stop()
            self.outbox.close()
        log.info("agent_stopped", outbox_depth=self.outbox.depth,
                 outbox_dropped=self.outbox.dropped)
        return 0

    def _start_live_view(self) -> None:
        """A live view that cannot listen (its port taken) is logged; the agent serves without it."""
        if self.live_view is None:
            return
        try:
            self.live_view.start()
        except OSError as exc:
            log.warning("live_view_not_listening", listen=self.config.live_view.listen, error=str(exc))
            self.live_view = None

    async def _report_fallback(self) -> None:
        await self.event("fell_back_to_previous", "alarm",
                         f"current model did not load: {self.fallback_reason}")

    async def guarded(self, name: str, action: Callable[[], Awaitable[None]]) -> bool:
        """Run ``action`` behind a boundary: a failure is logged and counted, never raised
        into the TaskGroup (which would cancel inference and abort the process)."""
        try:
            await action()
        except Exception:
            self.task_failures[name] = self.task_failures.get(name, 0) + 1
            log.exception("task_failed", task=name, failures=self.task_failures[name])
            return False
        return True

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)

    def _on_signal(self, name: str) -> None:
        self._stopped_by_signal = True
        self.request_stop(name)

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("agent_stopping", reason=reason)
            self._stop.set()

    async def _ready_when_first_frame(self) -> None:
        if not await self.liveness.ready_when_first_frame():
            self.request_stop("no frame was inferred in time")
            return
        if self.on_ready is not None:
            try:
                self.on_ready(self)
            except Exception:  # a summary for a person must never stop the agent
                log.exception("ready_hook_failed")

    async def _every(self, period: float, action: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=period)
            except asyncio.TimeoutError:
                # Telemetry must never take the agent down.
                await self.guarded(getattr(action, "__name__", "timer"), action)

    # ----- stop --------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self.notifier.stopping()
        bound = self.config.agent.stop_timeout_s
        self.stage_book.cancel()
        if self.manager is not None:
            self.manager.close()
        if self.router is not None:
            await self.router.drain()
        if self.live_view is not None:
            await asyncio.to_thread(self.live_view.stop)
        finished = await asyncio.to_thread(self.pipeline.stop, bound / 2)
        if not finished:
            log.warning("frame_worker_did_not_stop", timeout_s=bound / 2)
        await asyncio.to_thread(self.cameras.stop, bound / 4)
        self.second_stages.close()
        try:  # what the last frames saw (events above all) goes into the outbox before the flush
            await asyncio.wait_for(self.results.close(), timeout=bound / 4)
        except asyncio.TimeoutError:
            log.warning("results_flush_timed_out", timeout_s=bound / 4)
        assert self.session is not None
        try:
            await asyncio.wait_for(
                self.telemetry.publish_state(self.topics.status, self.status_payload(DeviceState.OFFLINE)),
                timeout=bound / 4)
            await asyncio.wait_for(self.session.stop(), timeout=bound / 4)
        except asyncio.TimeoutError:
            log.warning("broker_flush_timed_out", timeout_s=bound / 4)
        self.slot.clear(bound / 4)


def run_agent(config: AgentConfig, on_ready: Callable[[Agent], None] | None = None) -> int:
    agent = Agent(config)
    agent.on_ready = on_ready
    return asyncio.run(agent.run())
