"""The ground floor: configuration, the error root, logging, backoff, names. Imports nothing of the agent."""

from __future__ import annotations

from agent.core.backoff import Backoff
from agent.core.config.agent import ENV_PREFIX, AgentConfig, load_config, parse_scalar
from agent.core.config.base import ConfigError
from agent.core.config.camera import CameraSection, SourceSection, check_camera_set
from agent.core.config.deploy import DeploySection
from agent.core.config.live_view import LiveViewSection
from agent.core.config.model import ModelSection
from agent.core.config.monitor import BiasSection, DriftSection, EgressSection, LeakSection, MonitorSection
from agent.core.config.mqtt import BrokerAddress, BrokerUrlError, MqttSection, parse_broker_url
from agent.core.config.results import (
    LineSettings,
    RateSettings,
    ResultsSettings,
    SnapshotSettings,
    TrackerSettings,
    ZoneSettings,
)
from agent.core.errors import AgentError, CodedError
from agent.core.log import bind_context, configure_logging
from agent.core.names import (
    CONSUMERS_SEGMENT,
    GROUP_SEGMENT,
    NAME_PATTERN,
    RESERVED_SEGMENTS,
    ModelName,
    ModelVersion,
    TopicError,
    check_device_id,
    check_name,
    check_segment,
)
from agent.core.progress import UNKNOWN_TOTAL, Progress

__all__ = [
    "CONSUMERS_SEGMENT",
    "ENV_PREFIX",
    "GROUP_SEGMENT",
    "NAME_PATTERN",
    "RESERVED_SEGMENTS",
    "UNKNOWN_TOTAL",
    "AgentConfig",
    "AgentError",
    "Backoff",
    "BiasSection",
    "BrokerAddress",
    "BrokerUrlError",
    "CameraSection",
    "CodedError",
    "ConfigError",
    "DeploySection",
    "DriftSection",
    "EgressSection",
    "LeakSection",
    "LineSettings",
    "LiveViewSection",
    "ModelName",
    "ModelSection",
    "ModelVersion",
    "MonitorSection",
    "MqttSection",
    "Progress",
    "RateSettings",
    "ResultsSettings",
    "SnapshotSettings",
    "SourceSection",
    "TopicError",
    "TrackerSettings",
    "ZoneSettings",
    "bind_context",
    "check_camera_set",
    "check_device_id",
    "check_name",
    "check_segment",
    "configure_logging",
    "load_config",
    "parse_broker_url",
    "parse_scalar",
]
