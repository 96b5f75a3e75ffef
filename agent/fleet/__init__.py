"""The fleet package.

This ``__init__`` is the package's door: other packages import only what ``__all__`` names.
Each name is imported on first use (PEP 562), so importing one module of the package does
not import its siblings (a Jetson's capture-only venv, a fast CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core import door_getattr

if TYPE_CHECKING:
    from agent.fleet.artifact import FORMATS, HEAD_BYTES, sniff
    from agent.fleet.consumer import Consumer, ConsumerOptions
    from agent.fleet.control import ControlClient, ControlError, NoReplyError, Reply, new_command_id
    from agent.fleet.events import EventFilter, stream_events
    from agent.fleet.link import FleetLink
    from agent.fleet.local import LocalAgentError, LocalTarget, local_target
    from agent.fleet.plan import PlanError, RolloutPlan, parse_duration, parse_percent, parse_percents
    from agent.fleet.record import RecordError, RolloutStore, new_rollout_id
    from agent.fleet.rollout import Rollout
    from agent.fleet.rollout_spec import RolloutError, RolloutSpec, check_resume, plan_rollout
    from agent.fleet.status import collect, device_rows, render_table
    from agent.fleet.top import HEALTH_CAMERA, DeploymentRow, TopModel, TopRows
    from agent.fleet.web import LISTEN_HOST, FleetHttpServer, HttpAccess, parse_listen

__all__ = [
    "FORMATS",
    "HEAD_BYTES",
    "HEALTH_CAMERA",
    "LISTEN_HOST",
    "Consumer",
    "ConsumerOptions",
    "ControlClient",
    "ControlError",
    "DeploymentRow",
    "EventFilter",
    "FleetHttpServer",
    "FleetLink",
    "HttpAccess",
    "LocalAgentError",
    "LocalTarget",
    "NoReplyError",
    "PlanError",
    "RecordError",
    "Reply",
    "Rollout",
    "RolloutError",
    "RolloutPlan",
    "RolloutSpec",
    "RolloutStore",
    "TopModel",
    "TopRows",
    "check_resume",
    "collect",
    "device_rows",
    "local_target",
    "new_command_id",
    "new_rollout_id",
    "parse_duration",
    "parse_listen",
    "parse_percent",
    "parse_percents",
    "plan_rollout",
    "render_table",
    "sniff",
    "stream_events",
]

_HOMES = {
    "Consumer": "agent.fleet.consumer",
    "ConsumerOptions": "agent.fleet.consumer",
    "ControlClient": "agent.fleet.control",
    "ControlError": "agent.fleet.control",
    "DeploymentRow": "agent.fleet.top",
    "EventFilter": "agent.fleet.events",
    "FORMATS": "agent.fleet.artifact",
    "FleetHttpServer": "agent.fleet.web",
    "FleetLink": "agent.fleet.link",
    "HEAD_BYTES": "agent.fleet.artifact",
    "HEALTH_CAMERA": "agent.fleet.top",
    "HttpAccess": "agent.fleet.web",
    "LISTEN_HOST": "agent.fleet.web",
    "LocalAgentError": "agent.fleet.local",
    "LocalTarget": "agent.fleet.local",
    "NoReplyError": "agent.fleet.control",
    "PlanError": "agent.fleet.plan",
    "RecordError": "agent.fleet.record",
    "Reply": "agent.fleet.control",
    "Rollout": "agent.fleet.rollout",
    "RolloutError": "agent.fleet.rollout_spec",
    "RolloutPlan": "agent.fleet.plan",
    "RolloutSpec": "agent.fleet.rollout_spec",
    "RolloutStore": "agent.fleet.record",
    "TopModel": "agent.fleet.top",
    "TopRows": "agent.fleet.top",
    "check_resume": "agent.fleet.rollout_spec",
    "collect": "agent.fleet.status",
    "device_rows": "agent.fleet.status",
    "local_target": "agent.fleet.local",
    "new_command_id": "agent.fleet.control",
    "new_rollout_id": "agent.fleet.record",
    "parse_duration": "agent.fleet.plan",
    "parse_listen": "agent.fleet.web",
    "parse_percent": "agent.fleet.plan",
    "parse_percents": "agent.fleet.plan",
    "plan_rollout": "agent.fleet.rollout_spec",
    "render_table": "agent.fleet.status",
    "sniff": "agent.fleet.artifact",
    "stream_events": "agent.fleet.events",
}
"""The module each name of the door comes from."""

__getattr__ = door_getattr(__name__, _HOMES)
