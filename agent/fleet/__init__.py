"""The fleet package."""

from __future__ import annotations

from agent.fleet.artifact import FORMATS, HEAD_BYTES, sniff
from agent.fleet.consumer import Consumer, ConsumerOptions
from agent.fleet.control import ControlClient, ControlError, NoReplyError, Reply, new_command_id
from agent.fleet.events import EventFilter, stream_events
from agent.fleet.link import FleetLink
from agent.fleet.local import LocalAgentError, local_target
from agent.fleet.mqttfast import pack_connect, pack_publish
from agent.fleet.plan import PlanError, RolloutPlan, parse_duration, parse_percent, parse_percents
from agent.fleet.record import RecordError, RolloutStore, new_rollout_id
from agent.fleet.rollout import Rollout, RolloutError, RolloutSpec, check_resume, plan_rollout
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
    "pack_connect",
    "pack_publish",
    "parse_duration",
    "parse_listen",
    "parse_percent",
    "parse_percents",
    "plan_rollout",
    "render_table",
    "sniff",
    "stream_events",
]
