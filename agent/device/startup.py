"""What the agent decides before it serves: the engine options, the first model, the crash-loop verdict,
the command authority, the camera set to open.

Pure decisions over the store, the boot record and the config; the daemon (agent.device.daemon)
wires what they return. What cannot start raises ``StartupError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import structlog

from agent.core import AgentConfig, CameraSection, ModelSection
from agent.device.errors import DeviceError
from agent.models import (
    CRASH_LOOP_CODE,
    BootGuard,
    CrashLoop,
    DeploymentStatus,
    EngineOptions,
    ModelStore,
    StoreError,
    load_serving,
)
from agent.mqtt import CommandAuthority, NonceCache, load_command_key
from agent.runtime import EngineError, Serving, select_runtime
from agent.vision import CameraError, load_cameras
from agent.wire import DeploymentState, DeploymentStep

__all__ = [
    "NONCES_FILE",
    "CamerasSource",
    "StartupError",
    "camera_configs",
    "check_crash_loop",
    "command_authority",
    "crash_loop_status",
    "engine_options",
    "load_initial",
]

log = structlog.get_logger(__name__)

NONCES_FILE = "nonces.json"

CamerasSource = Literal["config", "commands"]
"""Where the camera set came from: the config file, or the state folder ``cmd/cameras`` wrote."""


class StartupError(DeviceError, RuntimeError):
    """The agent cannot start: no loadable model, no source, no broker binary."""


def engine_options(model: ModelSection) -> EngineOptions:
    """How engines are loaded, from the ``[model]`` section (its runtime must exist here)."""
    try:
        runtime = select_runtime(model.runtime)
    except EngineError as exc:
        raise StartupError(str(exc)) from exc
    return EngineOptions(
        runtime=runtime, threads=model.threads, providers=model.providers,
        fuse_preprocessing=model.fuse_preprocessing,
        tensorrt_shapes=model.tensorrt_shapes, tensorrt_precision=model.tensorrt_precision,
        workspace_mb=model.workspace_mb,
    )


def camera_configs(config: AgentConfig, path: Path) -> tuple[tuple[CameraSection, ...], CamerasSource]:
    """The cameras ``cmd/cameras`` last set (kept in the state folder at ``path``), else the file's."""
    try:
        saved = load_cameras(path, config.model.name)
    except CameraError as exc:
        log.error("cameras_file_invalid", path=str(path), error=exc.message)
        saved = None
    if saved is None:
        return config.cameras, "config"
    log.info("cameras_from_state", path=str(path), cameras=[c.name for c in saved])
    return saved, "commands"


def load_initial(store: ModelStore, name: str, options: EngineOptions) -> tuple[Serving, str | None]:
    """The store's current model, or previous when current does not load (with why current did not)."""
    store.clean_partial()
    failures = []
    for which in ("current", "previous"):
        try:
            installed = store.current(name) if which == "current" else store.previous(name)
            serving = load_serving(installed, options)
        except (StoreError, EngineError, ValueError) as exc:
            failures.append(f"{which}: {exc}")
            log.error("model_load_failed", model=name, which=which, error=str(exc))
            continue
        if which == "previous":
            store.activate(name, installed.version)
            log.warning("fell_back_to_previous", model=name, version=installed.version, reason=failures[0])
            return serving, failures[0]
        return serving, None
    raise StartupError(f"no loadable version of model {name!r}: " + "; ".join(failures))


def check_crash_loop(bootguard: BootGuard, store: ModelStore, name: str) -> CrashLoop | None:
    """Count the last start if it died; quarantine ``current`` after too many in a row."""
    verdict = bootguard.check(store.current_version(name))
    if verdict is None:
        return None
    log.error("crash_loop_detected", model=name, version=verdict.version, failures=verdict.failures)
    try:
        store.quarantine(name, verdict.version, CRASH_LOOP_CODE, failures=verdict.failures)
    except (OSError, StoreError) as exc:
        log.error("quarantine_not_written", model=name, version=verdict.version, error=str(exc))
    return verdict


def crash_loop_status(verdict: CrashLoop | None, serving: Serving, started_at: float) -> DeploymentStatus | None:
    """The rolled-back deployment to report when a crash loop made the agent serve another version."""
    if verdict is None or serving.version == verdict.version:
        return None
    return DeploymentStatus(
        deployment_id=f"{CRASH_LOOP_CODE}-{int(started_at)}", name=serving.name,
        version=verdict.version, state=DeploymentState.ROLLED_BACK, step=DeploymentStep.ACTIVE,
        progress=1.0,
        error={"code": CRASH_LOOP_CODE, "message": f"{verdict.message}; serving {serving.version}"},
        detail={"failures": verdict.failures, "serving_version": serving.version},
    )


def command_authority(config: AgentConfig) -> CommandAuthority | None:
    """Signed commands only, when the control plane's public key is configured."""
    settings = config.commands
    if settings.public_key_file is None:
        return None
    try:
        key = load_command_key(settings.public_key_file)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    nonces = NonceCache(settings.max_clock_skew_s, config.agent.state_dir / NONCES_FILE)
    log.info("command_signing_required", key=str(settings.public_key_file),
             max_clock_skew_s=settings.max_clock_skew_s)
    return CommandAuthority(key, settings.max_clock_skew_s, nonces)
