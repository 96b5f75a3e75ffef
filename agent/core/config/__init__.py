"""The agent's configuration: config.toml, ``EDGE_AGENT__`` overrides, one model a section.

One module a section (``device``: ``[agent]``, ``mqtt``, ``camera``, ``model``, ``telemetry``,
``deploy``, ``commands``, ``live_view``, ``monitor``, ``results``); ``agent`` holds the root
``AgentConfig`` and reads the file. This ``__init__`` is the package's door: other packages
import only what ``__all__`` names.
"""

from agent.core.config.agent import (
    ENV_PREFIX,
    ENV_SEPARATOR,
    AgentConfig,
    apply_env,
    load_config,
    parse_config,
    parse_scalar,
)
from agent.core.config.base import ConfigError, Section
from agent.core.config.camera import (
    CAMERA_SCHEMES,
    CameraSection,
    SourceSection,
    camera_from_source,
    check_camera_set,
)
from agent.core.config.commands import CommandsSection
from agent.core.config.deploy import DeploySection
from agent.core.config.device import AgentSection
from agent.core.config.live_view import LiveViewSection
from agent.core.config.model import ModelSection
from agent.core.config.monitor import BiasSection, DriftSection, EgressSection, LeakSection, MonitorSection
from agent.core.config.mqtt import (
    DEFAULT_BROKER_PORTS,
    EMBEDDED,
    BrokerAddress,
    BrokerUrlError,
    MqttSection,
    parse_broker_url,
)
from agent.core.config.results import (
    LineSettings,
    RateSettings,
    ResultsSettings,
    SnapshotSettings,
    TrackerSettings,
    ZoneSettings,
)
from agent.core.config.telemetry import TelemetrySection, WatchdogSection

__all__ = [
    "CAMERA_SCHEMES",
    "DEFAULT_BROKER_PORTS",
    "EMBEDDED",
    "ENV_PREFIX",
    "ENV_SEPARATOR",
    "AgentConfig",
    "AgentSection",
    "BiasSection",
    "BrokerAddress",
    "BrokerUrlError",
    "CameraSection",
    "CommandsSection",
    "ConfigError",
    "DeploySection",
    "DriftSection",
    "EgressSection",
    "LeakSection",
    "LineSettings",
    "LiveViewSection",
    "ModelSection",
    "MonitorSection",
    "MqttSection",
    "RateSettings",
    "ResultsSettings",
    "Section",
    "SnapshotSettings",
    "SourceSection",
    "TelemetrySection",
    "TrackerSettings",
    "WatchdogSection",
    "ZoneSettings",
    "apply_env",
    "camera_from_source",
    "check_camera_set",
    "load_config",
    "parse_broker_url",
    "parse_config",
    "parse_scalar",
]
