"""The device's cameras: one capture (``FrameSource``) per enabled ``[[camera]]``, changed at run time.

Every source of the set shares one condition, so the scheduler (agent.vision.scheduler)
sleeps on a single wait and wakes when any camera has a new frame. Adding,
updating or removing a camera touches only that camera's capture thread: the
others keep delivering, and the frame worker sees the new set on its next batch.
A source is stopped outside the set's lock (its thread needs the condition to end).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from agent.core import CameraSection, CodedError, check_camera_set
from agent.models import write_json_atomic
from agent.monitor import CameraRecorders
from agent.vision.capture import redact_uri
from agent.vision.errors import SourceError, VisionError
from agent.vision.sources import FrameSource, SourceStats
from agent.wire import CameraState

__all__ = [
    "CAMERAS_FILE", "CAMERA_ERROR_CODES", "Camera", "CameraError", "CameraSet", "camera_entry", "camera_rows",
    "described", "first_frame_error", "load_cameras", "overwritten", "save_cameras",
]

log = structlog.get_logger(__name__)

CAMERA_STOP_TIMEOUT_S = 5.0
"""How long a removed or replaced camera's capture thread is given to end."""
CAMERA_ERROR_CODES = ("camera_invalid", "camera_exists", "camera_not_found", "camera_unsupported",
                      "camera_unavailable")


class CameraError(VisionError, CodedError):
    """A camera cannot be added, changed or removed as asked; ``code`` and ``message`` reach the reply."""


@dataclass(eq=False)
class Camera:
    """One enabled camera: its settings, its capture, and the scheduler's per-camera state."""

    config: CameraSection
    source: FrameSource
    next_due: float = 0.0
    """``time.monotonic()`` before which an fps-capped camera is not taken from (scheduler-owned)."""
    frames_taken: int = 0
    """Frames handed to the engine."""
    roi_misses: int = 0
    """Frames dropped because the region of interest lies outside the frame."""

    @property
    def name(self) -> str:
        return self.config.name

    def stats(self) -> SourceStats:
        return self.source.stats()


class CameraSet:
    """The configured cameras (enabled or not) and a running capture for each enabled one."""

    def __init__(self, configs: Iterable[CameraSection], model_name: str) -> None:
        self.condition = threading.Condition()
        self.model_name = model_name
        self._configs: dict[str, CameraSection] = {}
        self._active: dict[str, Camera] = {}
        self._started = False
        self.retired_overwritten = 0
        """Frames overwritten by cameras since removed or replaced (the device total stays monotonic)."""
        self.refused: dict[str, str] = {}
        """Cameras of the file this OpenCV can never open (a missing backend): reported, not run,
        so that one such camera does not keep the others from serving."""
        for config in configs:
            self._check([*self._configs.values(), config])
            self._configs[config.name] = config
            if config.enabled:
                try:
                    self._active[config.name] = self._open(config)
                except CameraError as exc:
                    self.refused[config.name] = exc.message
                    log.error("camera_refused", camera=config.name, code=exc.code, error=exc.message)

    # ----- reading -----------------------------------------------------------------------
    def configs(self) -> tuple[CameraSection, ...]:
        with self.condition:
            return tuple(self._configs.values())

    def active(self) -> tuple[Camera, ...]:
        with self.condition:
            return tuple(self._active.values())

    def get(self, name: str) -> Camera | None:
        with self.condition:
            return self._active.get(name)

    def config(self, name: str) -> CameraSection | None:
        with self.condition:
            return self._configs.get(name)

    # ----- start / stop ------------------------------------------------------------------
    def start(self) -> None:
        with self.condition:
            self._started = True
            cameras = list(self._active.values())
        for camera in cameras:
            camera.source.start()

    def stop(self, timeout: float = CAMERA_STOP_TIMEOUT_S) -> bool:
        with self.condition:
            self._started = False
            cameras = list(self._active.values())
        return all([camera.source.stop(timeout) for camera in cameras])

    # ----- changes -----------------------------------------------------------------------
    def add(self, config: CameraSection) -> None:
        """Add a camera (and start it when the set runs); ``camera_exists`` if the name is taken."""
        with self.condition:
            if config.name in self._configs:
                raise CameraError("camera_exists", f"camera {config.name!r} already exists")
        self._replace(config.name, config)

    def update(self, config: CameraSection) -> None:
        """Replace a camera's settings: its capture is reopened with them; the others go on."""
        with self.condition:
            if config.name not in self._configs:
                raise CameraError("camera_not_found", f"camera {config.name!r} does not exist")
        self._replace(config.name, config)

    def remove(self, name: str) -> None:
        with self.condition:
            if name not in self._configs:
                raise CameraError("camera_not_found", f"camera {name!r} does not exist")
        self._replace(name, None)

    def _replace(self, name: str, config: CameraSection | None) -> None:
        with self.condition:
            configs = dict(self._configs)
        if config is None:
            configs.pop(name, None)
        else:
            configs[name] = config
            self._check(list(configs.values()))
        fresh = self._open(config) if config is not None and config.enabled else None
        with self.condition:
            self._configs = configs
            self.refused.pop(name, None)
            old = self._active.pop(name, None)
            if fresh is not None:
                self._active[name] = fresh
            started = self._started
            self.condition.notify_all()
        if old is not None:
            old.source.stop(CAMERA_STOP_TIMEOUT_S)
            with self.condition:
                self.retired_overwritten += old.stats().frames_dropped
        if fresh is not None and started:
            fresh.source.start()
        log.info("camera_changed", camera=name, action="removed" if config is None else "set",
                 enabled=None if config is None else config.enabled)

    def _check(self, configs: list[CameraSection]) -> None:
        try:
            check_camera_set(tuple(configs), self.model_name)
        except ValueError as exc:
            raise CameraError("camera_invalid", str(exc)) from None

    def _open(self, config: CameraSection) -> Camera:
        try:
            source = FrameSource(config, self.condition)
        except SourceError as exc:
            raise CameraError("camera_unsupported", f"camera {config.name!r}: {exc}") from exc
        return Camera(config, source)


def camera_rows(cameras: CameraSet, recorders: CameraRecorders) -> list[dict[str, Any]]:
    """Each configured camera for ``telemetry/health``'s ``cameras`` (disabled ones included)."""
    rows = []
    for config in cameras.configs():
        camera = cameras.get(config.name)
        snapshot = recorders.snapshot(config.name)
        inferred_fps = snapshot.fps if snapshot is not None else 0.0
        if camera is None:
            refused = cameras.refused.get(config.name)
            rows.append({"name": config.name, "state": CameraState.REFUSED if refused else CameraState.DISABLED,
                         "reopens": 0, "last_error": refused,
                         "fps": 0.0, "inferred_fps": 0.0, "frames_captured": 0, "frames_overwritten": 0,
                         "frames_inferred": 0, "errors": 0})
            continue
        stats = camera.stats()
        rows.append({
            "name": config.name, "state": stats.state.value, "reopens": stats.reopens,
            "last_error": stats.last_error, "fps": round(stats.fps, 2), "inferred_fps": round(inferred_fps, 2),
            "frames_captured": stats.frames_captured, "frames_overwritten": stats.frames_dropped,
            "frames_inferred": camera.frames_taken, "errors": recorders.errors(config.name),
        })
    return rows


def overwritten(cameras: CameraSet) -> dict[str, int]:
    """Frames each running camera overwrote before the engine took them."""
    return {camera.name: camera.stats().frames_dropped for camera in cameras.active()}


CAMERAS_FILE = "cameras.json"
"""In the state folder: the camera set as ``cmd/cameras`` last left it; it wins over the file."""
PROBE_MARGIN_S = 2.0
"""Added to a camera's ``read_timeout_s`` (FFmpeg's open timeout) while a command waits for its
first frame: past it the camera counts as unavailable and the change is undone."""
PROBE_POLL_S = 0.05


def camera_entry(document: Mapping[str, Any]) -> CameraSection:
    """A camera entry of a command, checked by the config file's own model; ``camera_invalid``
    names the camera and the key (``camera (yard).uri: ...``)."""
    try:
        return CameraSection.model_validate(dict(document))
    except ValidationError as exc:
        name = document.get("name")
        head = f"camera ({name})" if isinstance(name, str) else "camera"
        parts = []
        for item in exc.errors():
            key = ".".join(str(p) for p in item["loc"])
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            parts.append(f"{head}.{key}: {message.removeprefix('Value error, ')}")
        raise CameraError("camera_invalid", "; ".join(parts)) from None


async def first_frame_error(cameras: CameraSet, config: CameraSection) -> str | None:
    """None once the camera delivered a frame (or is disabled); else why it did not, in time."""
    if not config.enabled:
        return None
    camera = cameras.get(config.name)
    if camera is None:
        return f"camera {config.name!r} is not running"
    deadline = time.monotonic() + config.read_timeout_s + PROBE_MARGIN_S
    while time.monotonic() < deadline:
        stats = camera.stats()
        if stats.frames_captured > 0:
            return None
        if stats.last_error is not None:
            return f"camera {config.name!r}: {stats.last_error}"
        await asyncio.sleep(PROBE_POLL_S)
    return f"camera {config.name!r} delivered no frame within {config.read_timeout_s + PROBE_MARGIN_S:.1f} s"


def save_cameras(path: Path, configs: Iterable[CameraSection]) -> None:
    write_json_atomic(path, {"cameras": [c.model_dump(mode="json") for c in configs]})


def load_cameras(path: Path, model_name: str) -> tuple[CameraSection, ...] | None:
    """The saved camera set, None when there is none; CameraError when it does not check."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CameraError("camera_invalid", f"{path}: unreadable: {exc}") from None
    entries = document.get("cameras") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CameraError("camera_invalid", f"{path}: no 'cameras' list")
    configs = tuple(camera_entry(e) if isinstance(e, dict) else camera_entry({}) for e in entries)
    try:
        check_camera_set(configs, model_name)
    except ValueError as exc:
        raise CameraError("camera_invalid", f"{path}: {exc}") from None
    return configs


def described(cameras: CameraSet) -> list[dict[str, Any]]:
    """The retained ``cameras`` entries: settings (uri redacted) and state."""
    states = {row["name"]: row["state"] for row in camera_rows(cameras, CameraRecorders(1))}
    return [{**c.model_dump(mode="json"), "uri": redact_uri(c.uri), "state": states.get(c.name)}
            for c in cameras.configs()]
