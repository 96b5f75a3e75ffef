"""The agent: wires capture, inference, MQTT, deployments and telemetry into one asyncio TaskGroup.

Start: load the store's ``current`` model (``previous`` when current does not
load), open the source, start the frame worker, connect to the broker, and tell
systemd READY=1 once the first frame is inferred. Run: telemetry on timers, the
watchdog fed from frame progress, commands from MQTT. Stop (SIGTERM/SIGINT):
STOPPING=1, finish the frame in flight, publish ``offline``, flush, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from agent import __version__
from agent.core.config.agent import AgentConfig, CameraSection, ResultsSettings
from agent.core.log import bind_context
from agent.device.commands import CommandJournal, CommandRouter, Outcome
from agent.device.handlers import CommandHandlers
from agent.device.liveview import LiveView, LiveViewError
from agent.device.monitors import Signals
from agent.device.systemd import Notifier, SystemdError, WatchdogFeeder
from agent.models.bootguard import BOOT_RECORD_FILE, CRASH_LOOP_CODE, CRASH_TEST_ENV, BootGuard, CrashLoop
from agent.models.fetch import load_public_key
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeploymentManager, DeploymentStatus, Step
from agent.models.store import ModelStore, StoreError
from agent.monitor import health
from agent.monitor.latency import LatencyRecorder
from agent.monitor.telemetry import Telemetry
from agent.mqtt.authority import CommandAuthority, NonceCache, load_command_key
from agent.mqtt.broker import EmbeddedBroker
from agent.mqtt.outbox import OutboxError, SqliteOutbox
from agent.mqtt.session import MqttSession
from agent.mqtt.settings import SessionConfigError, check_certificate_identity
from agent.results import ResultsPublisher
from agent.runtime.base import EngineError
from agent.runtime.slot import EngineSlot, Serving
from agent.runtime.tensorrt import select_runtime
from agent.vision.cameras import (
    CAMERAS_FILE,
    CameraError,
    CameraSet,
    camera_rows,
    described,
    load_cameras,
    overwritten,
    save_cameras,
)
from agent.vision.pipeline import Pipeline
from agent.vision.scheduler import Scheduler
from agent.wire.schema import CamerasPayload, CommandError, StatusPayload
from agent.wire.topics import Topics

try:  # Python 3.10 (JetPack 6) has no asyncio.TaskGroup
    from asyncio import TaskGroup
except ImportError:  # pragma: no cover
    from taskgroup import TaskGroup  # type: ignore[no-redef]

__all__ = ["Agent", "StartupError", "run_agent"]

log = structlog.get_logger(__name__)

FIRST_FRAME_TIMEOUT_S = 120.0
"""READY=1 waits this long for the first inferred frame before giving up."""
WATCHDOG_DEFAULT_PERIOD_S = 2.0
"""How often frame progress is checked when systemd set no watchdog interval."""
JOURNAL_FILE = "commands.json"
OUTBOX_FILE = "outbox.sqlite3"
NONCES_FILE = "nonces.json"
RETAINED_KEYS = ("status", "model", "deployment", "cameras")
"""Retained topics: not queued in the outbox, so their sequence numbers are saved at once."""


class StartupError(RuntimeError):
    """The agent cannot start: no loadable model, no source, no broker binary."""


class Agent:
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
        self.cameras_file = config.agent.state_dir / CAMERAS_FILE
        if config.uses_source_section:
            log.warning("config_source_deprecated", camera=config.source.name,
                        hint="write the camera as a [[camera]] entry with a name (docs/cameras.md)")
        try:
            self.cameras = CameraSet(self._camera_configs(), config.model.name)
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
        self.sampler = health.ProcessSampler()
        self.signals = Signals(config, self.telemetry, self.event)
        self.pipeline.observers.append(self.signals.observer)
        self.results = ResultsPublisher(self.telemetry, self.topics, self._results_settings, config.agent.state_dir)
        self.pipeline.observers.append(self.results.observe)
        self.live_view: LiveView | None = None
        if config.live_view.enabled:
            try:
                self.live_view = LiveView(config.live_view, lambda: [c.name for c in self.cameras.active()],
                                          self._results_settings)
            except LiveViewError as exc:
                raise StartupError(str(exc)) from exc
            self.pipeline.observers.append(self.live_view.observe)
        self.started_at = time.time()
        try:
            runtime = select_runtime(config.model.runtime)
        except EngineError as exc:
            raise StartupError(str(exc)) from exc
        self.engine_options = EngineOptions(
            runtime=runtime, threads=config.model.threads, providers=config.model.providers,
            fuse_preprocessing=config.model.fuse_preprocessing,
            tensorrt_shapes=config.model.tensorrt_shapes, tensorrt_precision=config.model.tensorrt_precision,
            workspace_mb=config.model.workspace_mb,
        )
        self.previous_model: dict[str, str] | None = None
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
        self._frame_loop_stalled = False
        self.on_ready: Callable[[Agent], None] | None = None
        """Called once after READY=1 (the CLI prints a summary on a terminal); its failure is logged."""

    @property
    def broker_url(self) -> str:
        """The broker the agent talks to: the embedded one's loopback URL once it runs."""
        return self._broker.url if self._broker is not None and self._broker.running else self.config.mqtt.url

    # ----- start -------------------------------------------------------------------------
    def _camera_configs(self) -> tuple[CameraSection, ...]:
        """The cameras ``cmd/cameras`` last set (kept in the state folder), else the file's."""
        try:
            saved = load_cameras(self.cameras_file, self.config.model.name)
        except CameraError as exc:
            log.error("cameras_file_invalid", path=str(self.cameras_file), error=exc.message)
            saved = None
        self.cameras_source: Literal["config", "commands"] = "config" if saved is None else "commands"
        if saved is not None:
            log.info("cameras_from_state", path=str(self.cameras_file), cameras=[c.name for c in saved])
        return self.config.cameras if saved is None else saved

    def _results_settings(self, camera: str) -> ResultsSettings | None:
        """A camera's ``results`` table as the set runs it now (None: the camera is gone)."""
        config = self.cameras.config(camera)
        return None if config is None else config.results

    def cameras_changed(self) -> None:
        """Keep the set a command left (atomically: a kill leaves the old file or the new)."""
        save_cameras(self.cameras_file, self.cameras.configs())
        self.cameras_source = "commands"
        active = {c.name for c in self.cameras.configs()}
        for name in self.pipeline.cameras.names():
            if name not in active:
                self.pipeline.cameras.forget(name)

    async def publish_cameras(self) -> None:
        payload = CamerasPayload(**self.telemetry.envelope("cameras"), cameras=described(self.cameras),
                                 source=self.cameras_source)
        await self.telemetry.publish_state(self.topics.cameras, payload)

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
                self.fallback_reason = failures[0]
                log.warning("fell_back_to_previous", model=name, version=installed.version, reason=failures[0])
            return serving
        raise StartupError(f"no loadable version of model {name!r}: " + "; ".join(failures))

    def check_crash_loop(self) -> None:
        """Count the last start if it died; quarantine ``current`` after too many in a row."""
        name = self.config.model.name
        verdict = self.bootguard.check(self.store.current_version(name))
        if verdict is None:
            return
        self.crash_loop = verdict
        log.error("crash_loop_detected", model=name, version=verdict.version, failures=verdict.failures)
        try:
            self.store.quarantine(name, verdict.version, CRASH_LOOP_CODE, failures=verdict.failures)
        except (OSError, StoreError) as exc:
            log.error("quarantine_not_written", model=name, version=verdict.version, error=str(exc))

    def _crash_loop_status(self, serving: Serving) -> DeploymentStatus | None:
        verdict = self.crash_loop
        if verdict is None or serving.version == verdict.version:
            return None
        return DeploymentStatus(
            deployment_id=f"{CRASH_LOOP_CODE}-{int(self.started_at)}", name=serving.name,
            version=verdict.version, state=Step.ROLLED_BACK, step=Step.ACTIVE, progress=1.0,
            error={"code": CRASH_LOOP_CODE, "message": f"{verdict.message}; serving {serving.version}"},
            detail={"failures": verdict.failures, "serving_version": serving.version},
        )

    def _mqtt_url(self) -> str:
        mqtt = self.config.mqtt
        if mqtt.url != "embedded":
            return mqtt.url
        self._broker = EmbeddedBroker(mqtt.embedded_binary, port=mqtt.embedded_port,
                                      credentials_dir=self.config.agent.state_dir)
        self._broker.start()
        return self._broker.url

    def status_payload(self, state: str) -> StatusPayload:
        return self.telemetry.status(state, started_at=self.started_at, groups=self.config.agent.groups)

    async def _on_connect(self) -> None:
        """Birth, on every (re)connect: retained online status, serving model, latest deployment."""
        await self.telemetry.publish_state(self.topics.status, self.status_payload("online"))
        await self.publish_model()
        await self.publish_cameras()
        if self.deployment is not None:
            await self.publish_deployment(self.deployment)

    async def publish_model(self) -> None:
        serving = self.slot.serving
        if serving is not None:
            await self.telemetry.publish_state(self.topics.model, self.telemetry.model(serving, self.previous_model))

    async def publish_deployment(self, status: DeploymentStatus) -> None:
        self.deployment = status
        payload = self.telemetry.deployment(
            deployment_id=status.deployment_id, name=status.name, version=status.version,
            state=status.state.value, step=status.step.value, progress=status.progress,
            error=status.error,
        )
        await self.telemetry.publish_state(self.topics.deployment, payload)
        if status.state.value in ("committed", "failed", "rolled_back"):
            severity = "info" if status.state.value == "committed" else "warning"
            message = f"deployment {status.deployment_id} of {status.name} {status.version}: {status.state.value}"
            if status.error:
                message += f" ({status.error['message']})"
            await self.event(f"deployment_{status.state.value}", severity, message,
                             {"deployment_id": status.deployment_id, "step": status.step.value,
                              "error": status.error, **(status.detail or {})})

    async def event(self, kind: str, severity: str, message: str, data: dict | None = None) -> None:  # type: ignore[type-arg]
        await self.telemetry.publish(self.topics.events, self.telemetry.event(kind, severity, message, data))

    async def _swapped(self, new: Serving, old: Serving | None, reason: str) -> None:
        self.bootguard.swapped(new.version)
        self.signals.serving(new, swapped=True)
        self.previous_model = {"name": old.name, "version": old.version} if old else None
        bind_context(device_id=self.device_id, model_version=new.version)
        await self.publish_model()
        await self.event("engine_swapped", "info", f"now serving {new.name} {new.version} ({reason})",
                         {"from_version": old.version if old else None, "to_version": new.version,
                          "reason": reason})

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
            report=self.publish_deployment, swapped=self._swapped,
        )
        handlers = CommandHandlers(self)
        journal = CommandJournal(self.config.agent.state_dir / JOURNAL_FILE, deploy.journal_size)
        self.router = CommandRouter(self.topics, journal, handlers.table(), self._reply,
                                    self._rejected, self._authority())

    def _authority(self) -> CommandAuthority | None:
        """Signed commands only, when the control plane's public key is configured."""
        settings = self.config.commands
        if settings.public_key_file is None:
            return None
        try:
            key = load_command_key(settings.public_key_file)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        nonces = NonceCache(settings.max_clock_skew_s, self.config.agent.state_dir / NONCES_FILE)
        log.info("command_signing_required", key=str(settings.public_key_file),
                 max_clock_skew_s=settings.max_clock_skew_s)
        return CommandAuthority(key, settings.max_clock_skew_s, nonces)

    # ----- run ---------------------------------------------------------------------------
    async def run(self) -> int:
        self.check_crash_loop()
        serving = self.load_initial()
        self.bootguard.started(serving.version)
        if os.environ.get(CRASH_TEST_ENV) == serving.version:  # test-only fault: see CRASH_TEST_ENV
            log.critical("test_crash_injected", version=serving.version)
            os.abort()
        crash_loop = self._crash_loop_status(serving)
        self.slot.swap(serving)
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
            will=(self.topics.status, self.telemetry.encode(self.status_payload("lost"))),
            subscriptions=self.topics.command_filters(self.config.agent.groups),
            on_message=self.router.on_message, on_connect=self._on_connect, outbox=self.outbox,
        )
        self.telemetry.attach(self.session)
        self._install_signals()
        try:
            async with TaskGroup() as tasks:
                tasks.create_task(self.session.run(), name="mqtt")
                tasks.create_task(self.guarded("ready", self._ready_when_first_frame), name="ready")
                tasks.create_task(self._every(self.config.telemetry.latency_period_s, self.publish_latency))
                tasks.create_task(self._every(self.config.telemetry.health_period_s, self.publish_health))
                tasks.create_task(self._watchdog(), name="watchdog")
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
        if not self.cameras.active():  # nothing to infer yet: cmd/cameras may add a camera
            log.warning("no_camera_enabled", configured=[c.name for c in self.cameras.configs()])
            self.pipeline.first_frame.set()
        ready = await asyncio.to_thread(self.pipeline.first_frame.wait, FIRST_FRAME_TIMEOUT_S)
        if not ready:
            log.error("no_first_frame", timeout_s=FIRST_FRAME_TIMEOUT_S,
                      cameras={c.name: c.stats().state.value for c in self.cameras.active()})
            self.request_stop("no frame was inferred in time")
            return
        serving = self.slot.serving
        self.notifier.ready()
        self.notifier.status(f"serving {serving.name} {serving.version}" if serving else "serving")
        log.info("agent_ready", model=serving.name if serving else None)
        self.bootguard.ready()
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

    async def publish_latency(self) -> None:
        dropped = overwritten(self.cameras)
        recorders = self.pipeline.cameras
        per_camera = {name: (snap, dropped[name]) for name in dropped
                      if (snap := recorders.snapshot(name)) is not None}
        payload = self.telemetry.latency(self.recorder.snapshot(), self.pipeline.counters.frames_processed,
                                         sum(dropped.values()) + self.cameras.retired_overwritten, per_camera)
        await self.telemetry.publish(self.topics.telemetry("latency"), payload)

    def health_fields(self) -> dict:  # type: ignore[type-arg]
        cameras = camera_rows(self.cameras, self.pipeline.cameras)
        first = cameras[0] if cameras else {"state": "none", "reopens": 0, "last_error": None, "fps": 0.0}
        session = self.session.status() if self.session is not None else None
        serving = self.slot.serving
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "camera": {key: first[key] for key in ("state", "reopens", "last_error", "fps")},
            "cameras": cameras,
            "broker": {"state": session.state.name.lower() if session else "disconnected",
                       "reconnects": session.reconnects if session else 0},
            "model": {"name": serving.name, "version": serving.version, "runtime": serving.runtime}
            if serving else None,
            "cpu_percent": self.sampler.cpu_percent(),
            "memory_rss_bytes": health.rss_bytes(),
            "memory_available_bytes": health.memory_available_bytes() or 0,
            "temperatures_c": health.read_temperatures(),
            "gpu_load": health.read_gpu_load(),
            "disk_free_bytes": health.disk_free_bytes(self.store.root) or 0,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "outbox_state": self.outbox.state,
            "frames_processed": self.pipeline.counters.frames_processed,
            "task_failures": dict(self.task_failures),
            "results": self.results.health(),
        }

    async def publish_health(self) -> None:
        fields = self.health_fields()
        await self.telemetry.publish(self.topics.telemetry("health"), self.telemetry.health(**fields))
        log.info("health", frames_processed=fields["frames_processed"], fps=self.recorder.snapshot().fps,
                 camera=fields["camera"]["state"], broker=fields["broker"]["state"],
                 rss_mb=round(fields["memory_rss_bytes"] / 1e6, 1))

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        feeder = WatchdogFeeder(self.config.watchdog.stall_s)
        period = interval if interval else WATCHDOG_DEFAULT_PERIOD_S
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=period)

            async def tick() -> None:
                self._watchdog_tick(feeder, interval)

            await self.guarded("watchdog", tick)

    def _watchdog_tick(self, feeder: WatchdogFeeder, interval: float | None) -> None:
        """One check of frame progress: feed systemd's watchdog and refresh STATUS= if alive."""
        now = time.monotonic()
        alive = feeder.should_ping(self.pipeline.last_heartbeat, now)
        if alive and self.bootguard.tick(now):  # a hung loop proves nothing
            record = self.bootguard.record
            log.info("start_proved_stable", version=record.version if record else None,
                     after_s=self.bootguard.window_s)
        if alive == self._frame_loop_stalled:
            self._frame_loop_stalled = not alive
            if self._frame_loop_stalled:
                log.error("frame_loop_stalled", stall_s=self.config.watchdog.stall_s)
            else:
                log.info("frame_loop_resumed")
        if alive:
            if interval:
                self.notifier.watchdog()
            serving = self.slot.serving
            if serving is not None:
                fps = self.recorder.snapshot().fps
                self.notifier.status(f"serving {serving.name} {serving.version} at {fps:.1f} fps")

    # ----- stop --------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self.notifier.stopping()
        bound = self.config.agent.stop_timeout_s
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
        try:  # what the last frames saw (events above all) goes into the outbox before the flush
            await asyncio.wait_for(self.results.close(), timeout=bound / 4)
        except asyncio.TimeoutError:
            log.warning("results_flush_timed_out", timeout_s=bound / 4)
        assert self.session is not None
        try:
            await asyncio.wait_for(
                self.telemetry.publish_state(self.topics.status, self.status_payload("offline")), timeout=bound / 4)
            await asyncio.wait_for(self.session.stop(), timeout=bound / 4)
        except asyncio.TimeoutError:
            log.warning("broker_flush_timed_out", timeout_s=bound / 4)
        self.slot.clear()
        self.slot.drain(bound / 4)


def run_agent(config: AgentConfig, on_ready: Callable[[Agent], None] | None = None) -> int:
    agent = Agent(config)
    agent.on_ready = on_ready
    return asyncio.run(agent.run())
