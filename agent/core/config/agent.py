"""The agent's configuration: one TOML file, validated, with environment overrides; the root model.

Every section is a pydantic model with ``extra="forbid"``, so a typo in the file
is an error naming the key instead of a silently ignored line. Environment
variables ``EDGE_AGENT__<SECTION>__<KEY>`` override the file (values are parsed
as TOML scalars when they parse, else taken as strings). Each section is a module
of this package; this one holds the root ``AgentConfig`` and reads the file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError, model_validator

from agent.core.config.base import ConfigError, Section
from agent.core.config.camera import CameraSection, SourceSection, camera_from_source, check_camera_set
from agent.core.config.commands import CommandsSection
from agent.core.config.deploy import DeploySection
from agent.core.config.device import AgentSection
from agent.core.config.live_view import LiveViewSection
from agent.core.config.model import ModelSection
from agent.core.config.monitor import MonitorSection
from agent.core.config.mqtt import MqttSection
from agent.core.config.telemetry import TelemetrySection, WatchdogSection

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

__all__ = [
    "ENV_PREFIX",
    "ENV_SEPARATOR",
    "AgentConfig",
    "apply_env",
    "load_config",
    "parse_config",
    "parse_scalar",
]

ENV_PREFIX = "EDGE_AGENT__"
ENV_SEPARATOR = "__"


class AgentConfig(Section):
    agent: AgentSection = AgentSection()
    mqtt: MqttSection = MqttSection()
    source: SourceSection = SourceSection()
    """Deprecated: the single camera of old configurations; write ``[[camera]]`` entries instead."""
    camera: tuple[CameraSection, ...] = ()
    """The cameras (``[[camera]]`` entries); none: the ``[source]`` section is the one camera."""
    model: ModelSection = ModelSection()
    telemetry: TelemetrySection = TelemetrySection()
    watchdog: WatchdogSection = WatchdogSection()
    deploy: DeploySection = DeploySection()
    monitor: MonitorSection = MonitorSection()
    commands: CommandsSection = CommandsSection()
    live_view: LiveViewSection = LiveViewSection()

    @model_validator(mode="before")
    @classmethod
    def _one_camera_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" in data and data.get("camera"):
            raise ValueError("source: [source] and [[camera]] together: move [source] into a "
                             "[[camera]] entry (docs/cameras.md)")
        return data

    @model_validator(mode="after")
    def _camera_set(self) -> AgentConfig:
        check_camera_set(self.cameras, self.model.name)
        return self

    @property
    def uses_source_section(self) -> bool:
        """The deprecated ``[source]`` form was written (the daemon logs it once logging is set up)."""
        return "source" in self.model_fields_set

    @property
    def cameras(self) -> tuple[CameraSection, ...]:
        """Every configured camera, enabled or not: ``[[camera]]``, else ``[source]`` as one."""
        return self.camera if self.camera else (camera_from_source(self.source),)

    @property
    def store_dir(self) -> Path:
        return self.model.store if self.model.store is not None else self.agent.state_dir / "engines"

    def relative_to(self, base: Path) -> AgentConfig:
        """Paths in the file are taken from the file's folder, as a person reading it expects."""
        def resolve(path: Path | None) -> Path | None:
            return path if path is None or path.is_absolute() else base / path

        return self.model_copy(update={
            "agent": self.agent.model_copy(update={"state_dir": resolve(self.agent.state_dir)}),
            "model": self.model.model_copy(update={"store": resolve(self.model.store)}),
            "source": _file_from(self.source, base),
            "camera": tuple(_file_from(camera, base) for camera in self.camera),
            "deploy": self.deploy.model_copy(update={
                "public_key_file": resolve(self.deploy.public_key_file),
                "file_roots": tuple(base / root for root in self.deploy.file_roots)}),
            "commands": self.commands.model_copy(
                update={"public_key_file": resolve(self.commands.public_key_file)}),
        })

_S = TypeVar("_S", bound=SourceSection)


def _file_from(source: _S, base: Path) -> _S:
    """A source whose uri is a relative file path, with the path taken from ``base``."""
    uri = source.uri
    kind_is_file = not uri.isdigit() and "://" not in uri and "!" not in uri
    if kind_is_file and not Path(uri).is_absolute():
        return source.model_copy(update={"uri": str(base / uri)})
    return source


def parse_scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``EDGE_AGENT__SECTION__KEY=value`` variables onto the parsed file."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split(ENV_SEPARATOR)]
        if len(path) != 2 or not all(path):
            raise ConfigError(f"{key}: overrides must look like {ENV_PREFIX}SECTION__KEY")
        section, name = path
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{key}: [{section}] is not a section")
        target[name] = parse_scalar(value)
    return merged


def _where(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """``camera[1] (yard).uri`` for a camera's key, ``mqtt.url`` for any other."""
    if len(loc) >= 2 and loc[0] == "camera" and isinstance(loc[1], int):
        entries = data.get("camera")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        head = f"camera[{loc[1]}]" + (f" ({name})" if isinstance(name, str) else "")
        return ".".join([head, *(str(p) for p in loc[2:])])
    return ".".join(str(p) for p in loc)


def _describe(error: ValidationError, origin: str, data: Mapping[str, Any] | None = None) -> str:
    lines = []
    for item in error.errors():
        where = _where(item["loc"], data or {})
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (not a setting of this section)"
        if not where and item["type"] == "value_error":  # a check across sections names its own key
            lines.append(f"{origin}: {item['ctx']['error']}")
            continue
        lines.append(f"{origin}: {where}: {message}")
    return "\n".join(lines)


def parse_config(
    text: str, origin: str = "<config>", environ: Mapping[str, str] | None = None
) -> AgentConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib is recursive: an array nested thousands deep ends here
        raise ConfigError(f"{origin}: not valid TOML: values nested too deep") from None
    data = apply_env(data, os.environ if environ is None else environ)
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, data)) from exc
    return config


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override and validate a config file; relative paths are taken from its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config(text, str(path), environ).relative_to(path.resolve().parent)
