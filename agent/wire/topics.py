"""The topic tree of one device: what it publishes to and which commands reach it.

Pure string work, no I/O. ``<prefix>/<device>/...`` for the device's own topics,
``<prefix>/group/<group>/cmd/<name>`` for commands addressed to a group. The segment and
device-id checks live in agent.core.names (the config checks ids with them too) and are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.core import CONSUMERS_SEGMENT, GROUP_SEGMENT, RESERVED_SEGMENTS, TopicError, check_device_id, check_segment

__all__ = [
    "CONSUMERS_SEGMENT",
    "GROUP_SEGMENT",
    "RESERVED_SEGMENTS",
    "TopicError",
    "Topics",
    "check_device_id",
    "check_segment",
]

COMMAND_SEGMENT = "cmd"


def _check_prefix(prefix: str) -> str:
    if not prefix or prefix.startswith("/") or prefix.endswith("/"):
        raise TopicError(f"prefix {prefix!r} must be non-empty and not start or end with '/'")
    for level in prefix.split("/"):
        check_segment(level, "prefix level")
    return prefix


@dataclass(frozen=True)
class Topics:
    """The topics of device ``device_id`` under ``prefix`` (``edge`` by default)."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)
        check_device_id(self.device_id)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def model(self) -> str:
        return f"{self.base}/model"

    @property
    def deployment(self) -> str:
        return f"{self.base}/deployment"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def cameras(self) -> str:
        """Retained: the cameras the device runs (docs/cameras.md)."""
        return f"{self.base}/cameras"

    def results(self, camera: str) -> str:
        """One camera's results stream (QoS 0 by default, not queued; docs/results.md)."""
        return f"{self.base}/results/{check_segment(camera, 'camera name')}"

    def counts(self, camera: str) -> str:
        """Retained: objects per zone and label of one camera."""
        return f"{self.base}/counts/{check_segment(camera, 'camera name')}"

    def snapshots(self, camera: str) -> str:
        """One camera's event pictures, when its snapshots go over MQTT: bytes of one JPEG, QoS 1, not retained."""
        return f"{self.base}/snapshots/{check_segment(camera, 'camera name')}"

    def telemetry(self, kind: str) -> str:
        return f"{self.base}/telemetry/{check_segment(kind, 'telemetry kind')}"

    def command(self, name: str) -> str:
        """Where a control plane publishes command ``name`` for this device."""
        return f"{self.base}/{COMMAND_SEGMENT}/{check_segment(name, 'command name')}"

    def group_command(self, group: str, name: str) -> str:
        """Where a control plane publishes command ``name`` for every device of ``group``."""
        check_segment(group, "group")
        check_segment(name, "command name")
        return f"{self.prefix}/{GROUP_SEGMENT}/{group}/{COMMAND_SEGMENT}/{name}"

    def command_filters(self, groups: Iterable[str] = ()) -> list[str]:
        """The subscriptions that bring this device its own and its groups' commands."""
        filters = [f"{self.base}/{COMMAND_SEGMENT}/+"]
        for group in groups:
            check_device_id(group, "group")
            filters.append(f"{self.prefix}/{GROUP_SEGMENT}/{group}/{COMMAND_SEGMENT}/+")
        return filters

    def command_name(self, topic: str) -> str | None:
        """The command a topic carries, or None when it is not a command topic of this tree.

        Group commands are accepted for any group: the device only subscribes to its own.
        """
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        levels = topic[len(head) :].split("/")
        if len(levels) == 3 and levels[0] == self.device_id and levels[1] == COMMAND_SEGMENT:
            name = levels[2]
        elif len(levels) == 4 and levels[0] == GROUP_SEGMENT and levels[2] == COMMAND_SEGMENT:
            name = levels[3] if levels[1] else ""
        else:
            return None
        return name or None
