"""The agent's configuration: one TOML file, validated, with environment overrides.

Every section is a pydantic model with ``extra="forbid"``, so a typo in the file
is an error naming the key instead of a silently ignored line. Environment
variables ``EDGE_AGENT__<SECTION>__<KEY>`` override the file (values are parsed
as TOML scalars when they parse, else taken as strings).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.config.monitor import MonitorSection
from agent.core.config.results import ResultsSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

__all__ = [
    "CAMERA_SCHEMES",
    "ENV_PREFIX",
    "AgentConfig",
    "CameraSection",
    "Config",
    "ConfigError",
    "LiveViewSection",
    "ResultsSettings",
    "check_camera_set",
    "load_config",
]


ENV_PREFIX = "EDGE_AGENT__"
ENV_SEPARATOR = "__"


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class AgentSection(Section):
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    groups: tuple[str, ...] = ()
    """Groups this device belongs to: it also obeys ``<prefix>/group/<g>/cmd/...``."""
    state_dir: Path = Path("/var/lib/edge-agent")
    """Holds the engine store, the command-id journal and the outbox."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged (JSON lines off a TTY, console lines on one)."""
    stop_timeout_s: float = Field(default=10.0, gt=0)
    """Upper bound for a clean stop after SIGTERM/SIGINT."""
    crash_loop_starts: int = Field(default=3, ge=1, le=100)
    """Failed starts in a row with one model version before that version is quarantined and
    ``previous`` served. Below the unit's ``StartLimitBurst=10`` so that systemd is still
    restarting when the agent falls back; above 1 so that one power cut is not a verdict."""
    crash_loop_window_s: float = Field(default=120.0, gt=0)
    """An abnormal exit this soon after READY still counts as a failed start: a model that
    dies on its first minutes of traffic is as bad as one that never starts."""

    @field_validator("device_id", "groups")
    @classmethod
    def _topic_safe(cls, value: Any) -> Any:
        # Imported here: agent.mqtt imports this module (its session takes an MqttSection).
        from agent.wire.topics import TopicError, check_device_id

        for name in (value,) if isinstance(value, str) else value:
            try:
                check_device_id(name, "id")
            except TopicError as exc:
                raise ValueError(str(exc)) from None
        return value


class MqttSection(Section):
    url: str = "embedded"
    """``embedded`` (a mosquitto child process on loopback), ``mqtt://host:port`` or ``mqtts://host:port``."""
    prefix: str = "edge"
    """First topic level of every topic."""
    protocol: Literal["3.1.1", "5"] = "5"
    """MQTT protocol version; the contract works on both (ids live in the payloads)."""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    """MQTT keepalive; the broker publishes the ``lost`` will about 1.5x this after a silent death."""
    username: str | None = None
    """Broker user name; the password never goes in this file (see ``password_file``)."""
    password_file: Path | None = None
    """Read at connect time; ``$CREDENTIALS_DIRECTORY/mqtt-password`` is used when unset and present."""
    ca_file: Path | None = None
    """CA bundle that signed the broker's certificate (mqtts://)."""
    cert_file: Path | None = None
    """Client certificate for mutual TLS."""
    key_file: Path | None = None
    """Private key of the client certificate."""
    reconnect_min_s: float = Field(default=0.5, gt=0)
    """First reconnect delay; it doubles (with jitter) up to ``reconnect_max_s``."""
    reconnect_max_s: float = Field(default=30.0, gt=0)
    """Cap of the reconnect delay."""
    outbox_max_messages: int = Field(default=10_000, ge=1, le=10_000_000)
    """Telemetry, events and replies kept (on disk, across restarts) while the broker is away;
    the oldest are dropped first and counted."""
    outbox_max_age_s: float = Field(default=86_400.0, gt=0)
    """Queued messages older than this are dropped unsent (and counted)."""
    embedded_binary: Path = Path("/usr/sbin/mosquitto")
    """The mosquitto binary that ``url = "embedded"`` starts."""
    embedded_port: int = Field(default=0, ge=0, le=65535)
    """0 picks a free port on loopback."""

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if value == "embedded":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not 'embedded' nor a mqtt://host[:port] or mqtts://host[:port] URL"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "holds credentials; set username here and put the password in password_file "
                "or the systemd credential mqtt-password, never in the URL"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "password: not a setting: config.toml is world-readable; put the password in "
                "password_file or the systemd credential mqtt-password"
            )
        return data

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/"):
            raise ValueError(f"{value!r} is not a usable topic prefix")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class SourceSection(Section):
    uri: str = "0"
    """A V4L2 index ("0"), a file path, an rtsp:// or http(s):// URL, or a GStreamer pipeline (contains '!')."""
    loop: bool = True
    """Files only: start again at the end instead of reporting the source as ended."""
    pace: Literal["native", "none"] = "native"
    """Files only: ``native`` reads at the file's own frame rate like a camera; ``none`` as fast as decoded."""
    reopen_min_s: float = Field(default=0.5, gt=0)
    """First delay before reopening a failed source; doubles up to ``reopen_max_s``."""
    reopen_max_s: float = Field(default=1.0, gt=0)
    """Cap of the reopen delay: a camera server back from a restart is found within it (a refused connection
    a second costs nothing), so an RTSP camera is back at full rate within about 3 s of its return."""
    read_timeout_s: float = Field(default=5.0, gt=0)
    """A source that delivers no frame for this long is ``stalled`` and reopened; one whose frames nobody takes
    for this long is ``blocked`` (the agent is behind) and keeps its stream."""
    name: str = "camera0"
    """The slice name of this source in telemetry."""


CAMERA_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "file"})
"""URL schemes a camera may name (anything else with ``://`` is refused as a wrong scheme)."""


def _check_camera_name(value: str) -> str:
    from agent.wire.topics import TopicError, check_segment

    try:
        return check_segment(value, "camera name")
    except TopicError as exc:
        raise ValueError(str(exc)) from None


class CameraSection(SourceSection):
    """One ``[[camera]]`` entry: a source of frames with its own name, rate cap and region."""

    name: str = Field(min_length=1)
    """The camera's id: a topic segment (no ``/ + #``), unique on the device; it names the camera in
    telemetry, results and commands."""
    uri: str = Field(min_length=1)
    """A V4L2 index ("0"), a file path or file:// URL, an rtsp(s):// or http(s):// URL, or a GStreamer
    pipeline (contains '!')."""
    enabled: bool = True
    """A disabled camera is kept in the configuration but not opened."""
    fps: float | None = Field(default=None, gt=0, le=1000)
    """Most frames per second inferred from this camera; unset: as many as it delivers and the
    engine takes (the scheduler shares the engine round-robin)."""
    roi: tuple[int, int, int, int] | None = None
    """Region of interest ``[x, y, width, height]`` in frame pixels; only it is inferred
    (clipped to the frame). Unset: the whole frame."""
    model: str | None = None
    """Reserved for when more than one model serves: today only the serving model's name
    (``[model].name``) is accepted."""
    results: ResultsSettings = ResultsSettings()
    """What the camera's predictions become: tracks, zones, lines, events, counts and the
    results stream (docs/results.md, the tables below)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_camera_name(value)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise ValueError("is empty")
        if "!" not in text and "://" in text:
            scheme = urlsplit(text).scheme.lower()
            if scheme not in CAMERA_SCHEMES:
                known = ", ".join(sorted(CAMERA_SCHEMES))
                raise ValueError(f"scheme {scheme!r} is not a camera transport (known: {known}, "
                                 "a file path, a V4L2 index or a GStreamer pipeline)")
        return value

    @field_validator("roi")
    @classmethod
    def _roi(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None:
            x, y, width, height = value
            if x < 0 or y < 0 or width < 1 or height < 1:
                raise ValueError(f"[x, y, width, height] needs x, y >= 0 and width, height >= 1, got {list(value)}")
        return value

    @property
    def label(self) -> str:
        return f"camera {self.name!r}"


def camera_from_source(source: SourceSection) -> CameraSection:
    """The deprecated single ``[source]`` as the one camera it stands for."""
    return CameraSection.model_validate(source.model_dump())


def check_camera_set(cameras: tuple[CameraSection, ...], model_name: str) -> None:
    """Refuse duplicate names and a per-camera model that is not the serving one (ValueError
    whose message starts with ``camera[i] (name).key``)."""
    seen: dict[str, int] = {}
    for index, camera in enumerate(cameras):
        where = f"camera[{index}] ({camera.name})"
        if camera.name in seen:
            raise ValueError(f"{where}.name: duplicate: camera[{seen[camera.name]}] is already named "
                             f"{camera.name!r}")
        seen[camera.name] = index
        if camera.model is not None and camera.model != model_name:
            raise ValueError(f"{where}.model: {camera.model!r} is not served here: one model serves "
                             f"every camera today ([model].name = {model_name!r})")


class ModelSection(Section):
    name: str = "text-det"
    """Which model of the store to serve (its ``current`` version)."""
    runtime: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    """``auto``: TensorRT where a GPU and TensorRT are present, else ONNX Runtime."""
    threads: int = Field(default=2, ge=1, le=256)
    """ONNX Runtime intra-op threads."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """ONNX Runtime execution providers, in order of preference."""
    keep_versions: int = Field(default=3, ge=2, le=100)
    """Installed versions kept per model (current and previous are never removed)."""
    store: Path | None = None
    """The engine store; default ``<state_dir>/engines``."""
    fuse_preprocessing: bool = True
    """Fold normalisation into the ONNX graph so the frame goes in as uint8 (both runtimes)."""
    tensorrt_shapes: tuple[str, ...] = ()
    """TensorRT optimization profiles of dynamic inputs, ``name:MIN:OPT:MAX`` (dims joined by 'x'); with
    fused preprocessing the image input is uint8 NHWC, e.g. ``x:1x480x640x3`` for a 640x480 camera."""
    tensorrt_precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    """``auto``: the precision the ONNX model carries (explicit Q/DQ INT8, FP16 weights, else FP32)."""
    workspace_mb: int = Field(default=1024, ge=1, le=65536)
    """TensorRT builder workspace."""


class TelemetrySection(Section):
    health_period_s: float = Field(default=10.0, gt=0)
    """Seconds between ``telemetry/health`` messages."""
    latency_period_s: float = Field(default=5.0, gt=0)
    """Seconds between ``telemetry/latency`` messages."""
    latency_window: int = Field(default=600, ge=10, le=100_000)
    """Frames kept for the latency percentiles."""


class WatchdogSection(Section):
    stall_s: float = Field(default=10.0, gt=0)
    """No processed frame for this long stops the systemd watchdog pings."""


class DeploySection(Section):
    allowed_schemes: tuple[Literal["http", "https", "file"], ...] = ("https", "http", "file")
    """URL schemes a deploy may fetch from."""
    max_artifact_mb: float = Field(default=512.0, gt=0)
    """Downloads larger than this are refused (checked while streaming)."""
    public_key_file: Path | None = None
    """ed25519 public key (PEM); when set, a deploy must carry a statement signed by its private key
    (name, version, format, sha256, expiry), checked before anything is downloaded."""
    file_roots: tuple[Path, ...] = ()
    """Folders a ``file://`` deploy may read (symlinks resolved first); empty: ``file://`` is refused."""
    download_timeout_s: float = Field(default=900.0, gt=0)
    """Whole-download deadline (connect to last byte); past it the deployment fails (``download_timeout``)."""
    warmup_runs: int = Field(default=3, ge=1, le=100)
    """Inferences on a real frame before a new model may serve."""
    latency_budget_ms: float = Field(default=2000.0, gt=0)
    """A model whose warm inference takes longer than this is refused. It is measured beside the
    serving model at the loader's niceness, so it is an upper bound of the model's own latency."""
    load_nice: int = Field(default=10, ge=0, le=19)
    """Niceness while a new model's session is created and warmed beside the serving one (0: off)."""
    probation_s: float = Field(default=30.0, ge=0)
    """How long a new model is watched after the swap (a deploy may set its own)."""
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    """Probation fails when more frames than this share fail to infer."""
    max_nonfinite: int = Field(default=0, ge=0)
    """Probation fails when more frames than this give NaN/inf outputs."""
    max_latency_ratio: float = Field(default=1.5, gt=0)
    """Probation fails when the new model's p95 latency exceeds the old one's by this factor."""
    min_probation_frames: int = Field(default=10, ge=1)
    """Frames needed before probation judges error rate and latency."""
    behaviour_window: int = Field(default=3000, ge=10, le=1_000_000)
    """Recent frames' outputs kept (all cameras, all versions) for behavioural probation: enough
    for ``behaviour_baseline_frames`` on each camera."""
    behaviour_min_frames: int = Field(default=30, ge=1)
    """Frames a camera needs from the new model, and from the old one, before its behaviour is judged."""
    behaviour_baseline_frames: int = Field(default=300, ge=1)
    """The old model's last frames per camera before the swap that make its baseline."""
    behaviour_min_baseline_count: float = Field(default=0.5, gt=0)
    """The old model's mean detections per frame at which it 'saw something' on a camera: below it a
    new model that detects nothing there is not judged, and the upper ratio is taken against this."""
    behaviour_min_count_ratio: float = Field(default=0.1, gt=0)
    """Probation fails when new / old mean detections per frame on a camera is below this (sees nothing).
    The demo detector v4 -> v6 is 0.87; a model that detects nothing is 0."""
    behaviour_max_count_ratio: float = Field(default=10.0, gt=0)
    """Probation fails when new / old mean detections per frame on a camera is above this (sees everything)."""
    behaviour_max_score_js: float = Field(default=0.6, gt=0, le=1)
    """Probation fails past this JS distance between the new and old score distributions on a camera
    (v4 -> v6 of the demo detector: 0.27)."""
    behaviour_max_label_js: float = Field(default=0.6, gt=0, le=1)
    """Probation fails past this JS distance between the new and old label mix on a camera."""
    behaviour_max_reference_psi: float = Field(default=1.5, gt=0)
    """Probation fails past this PSI of an output metric against the bundle's reference (the drift
    monitor's arithmetic; v6 against v4's reference: 0.51, a model that detects nothing: 2.2)."""
    behaviour_max_reference_js: float = Field(default=0.5, gt=0, le=1)
    """Probation fails past this JS distance of an output metric against the bundle's reference
    (v6 against v4's reference: 0.29, a model that detects nothing: 0.57)."""
    journal_size: int = Field(default=1000, ge=10, le=1_000_000)
    """Command ids remembered (across restarts) to answer repeats without redoing them."""


class CommandsSection(Section):
    public_key_file: Path | None = None
    """The control plane's ed25519 public key (PEM); when set, every command must be signed."""
    max_clock_skew_s: float = Field(default=120.0, gt=0, le=86_400)
    """A signed command whose ``ts`` is further than this from the device clock is refused;
    nonces are remembered for as long, so a replay within the window is refused too."""


class LiveViewSection(Section):
    """The live view: an HTTP page with each camera's annotated MJPEG stream (docs/operations.md)."""

    enabled: bool = True
    """On by default: it listens on loopback only, and costs nothing until a client watches."""
    listen: str = "127.0.0.1:8090"
    """``host:port`` to listen on (port 0: any free one). Beyond loopback it needs ``token_file``."""
    token_file: Path | None = None
    """A file holding the bearer token (``Authorization: Bearer ...`` or ``?token=``); when set, every
    request needs it, on loopback too."""
    max_fps: float = Field(default=5.0, gt=0, le=30)
    """Most frames a second a stream sends (and the frames a second encoded per camera)."""
    jpeg_quality: int = Field(default=80, ge=10, le=100)
    """JPEG quality of the streamed frames and snapshots."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdecimal() or int(port) > 65535:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8090)")
        return value

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> LiveViewSection:
        if self.enabled and not self.loopback and self.token_file is None:
            raise ValueError(f"listen {self.listen!r} is beyond loopback: set token_file (a bearer token "
                             "is required there) or listen on 127.0.0.1")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        """Whether only this device can reach it (127.0.0.0/8, ::1, localhost)."""
        host = self.host
        return host in ("localhost", "::1") or host.startswith("127.")


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


Config = AgentConfig

_S = TypeVar("_S", bound=SourceSection)


def _file_from(source: _S, base: Path) -> _S:
    """A source whose uri is a relative file path, with the path taken from ``base``."""
    uri = source.uri
    kind_is_file = not uri.isdigit() and "://" not in uri and "!" not in uri
    if kind_is_file and not Path(uri).is_absolute():
        return source.model_copy(update={"uri": str(base / uri)})
    return source


def _parse_scalar(text: str) -> Any:
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
        target[name] = _parse_scalar(value)
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
