"""The ground floor: configuration, the error root, logging, backoff, names, choices. Imports nothing of the agent.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.doors import door_getattr

if TYPE_CHECKING:
    from agent.core.backoff import Backoff
    from agent.core.choices import one_of
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
    from agent.core.doors import door_getattr
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
    "door_getattr",
    "load_config",
    "one_of",
    "parse_broker_url",
    "parse_scalar",
]

_HOMES = {
    "AgentConfig": "agent.core.config.agent",
    "AgentError": "agent.core.errors",
    "Backoff": "agent.core.backoff",
    "BiasSection": "agent.core.config.monitor",
    "BrokerAddress": "agent.core.config.mqtt",
    "BrokerUrlError": "agent.core.config.mqtt",
    "CONSUMERS_SEGMENT": "agent.core.names",
    "CameraSection": "agent.core.config.camera",
    "CodedError": "agent.core.errors",
    "ConfigError": "agent.core.config.base",
    "DeploySection": "agent.core.config.deploy",
    "DriftSection": "agent.core.config.monitor",
    "ENV_PREFIX": "agent.core.config.agent",
    "EgressSection": "agent.core.config.monitor",
    "GROUP_SEGMENT": "agent.core.names",
    "LeakSection": "agent.core.config.monitor",
    "LineSettings": "agent.core.config.results",
    "LiveViewSection": "agent.core.config.live_view",
    "ModelName": "agent.core.names",
    "ModelSection": "agent.core.config.model",
    "ModelVersion": "agent.core.names",
    "MonitorSection": "agent.core.config.monitor",
    "MqttSection": "agent.core.config.mqtt",
    "NAME_PATTERN": "agent.core.names",
    "Progress": "agent.core.progress",
    "RESERVED_SEGMENTS": "agent.core.names",
    "RateSettings": "agent.core.config.results",
    "ResultsSettings": "agent.core.config.results",
    "SnapshotSettings": "agent.core.config.results",
    "SourceSection": "agent.core.config.camera",
    "TopicError": "agent.core.names",
    "TrackerSettings": "agent.core.config.results",
    "UNKNOWN_TOTAL": "agent.core.progress",
    "ZoneSettings": "agent.core.config.results",
    "bind_context": "agent.core.log",
    "check_camera_set": "agent.core.config.camera",
    "check_device_id": "agent.core.names",
    "check_name": "agent.core.names",
    "check_segment": "agent.core.names",
    "configure_logging": "agent.core.log",
    "door_getattr": "agent.core.doors",
    "load_config": "agent.core.config.agent",
    "one_of": "agent.core.choices",
    "parse_broker_url": "agent.core.config.mqtt",
    "parse_scalar": "agent.core.config.agent",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
