"""One enum per state machine of the contract, with the named sets that code branches on.

The values are the strings on the wire (docs/mqtt.md); an enum member equals its
value (``DeploymentState.COMMITTED == "committed"``) and formats as it, so a member
can go wherever the string went. Never write a state as a bare string: name it here.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

__all__ = [
    "CameraState",
    "DeploymentState",
    "DeploymentStep",
    "DeviceState",
    "OutboxState",
    "SessionState",
    "SignalState",
    "SliceStatus",
]


class _State(str, Enum):
    """A state: a str whose ``str()`` and ``format()`` are its value (as ``enum.StrEnum``, py3.11+)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(str.__str__(self), format_spec)


class DeviceState(_State):
    """The retained ``status`` of a device: ``lost`` is its will, published by the broker."""

    ONLINE = "online"
    OFFLINE = "offline"
    """After a clean stop."""
    LOST = "lost"
    """The connection died without a clean stop."""

    GONE: ClassVar[frozenset[DeviceState]]
    """Not connected, for whatever reason."""


DeviceState.GONE = frozenset({DeviceState.OFFLINE, DeviceState.LOST})


class DeploymentState(_State):
    """Where a deployment stands (the ``deployment`` topic's ``state``; docs/mqtt.md)."""

    RECEIVED = "received"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    BUILDING = "building"
    LOADING = "loading"
    WARMING = "warming"
    VALIDATING = "validating"
    SHADOW = "shadow"
    """Loaded and warmed, seeing sampled live frames beside the serving model; not serving."""
    ACTIVE = "active"
    """Serving, in probation."""
    COMMITTED = "committed"
    FAILED = "failed"
    """It never served; the old model kept serving."""
    ROLLED_BACK = "rolled_back"
    """It served, then the old model came back (probation or a rollback command)."""
    DISCARDED = "discarded"
    """Its shadow run did not agree with the serving model (or was not promoted): it never served."""

    FINAL: ClassVar[frozenset[DeploymentState]]
    """No state follows these."""
    BAD: ClassVar[frozenset[DeploymentState]]
    """Final, and the deployed model is not serving."""


DeploymentState.FINAL = frozenset({DeploymentState.COMMITTED, DeploymentState.FAILED, DeploymentState.ROLLED_BACK,
                                   DeploymentState.DISCARDED})
DeploymentState.BAD = frozenset({DeploymentState.FAILED, DeploymentState.ROLLED_BACK, DeploymentState.DISCARDED})


class DeploymentStep(_State):
    """What a deployment is doing (or was doing when it failed): its states before the final ones."""

    RECEIVED = "received"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    BUILDING = "building"
    """Only when the artifact must be built for this device (an engine from ONNX)."""
    LOADING = "loading"
    WARMING = "warming"
    VALIDATING = "validating"
    SHADOW = "shadow"
    """Beside the serving model on sampled frames, judged by agreement (a ``"mode": "shadow"`` deploy)."""
    ACTIVE = "active"
    """Serving, in probation."""
    COMMITTED = "committed"

    PREPARING: ClassVar[frozenset[DeploymentStep]]
    """Steps before the new model serves: a failure in them leaves the old one serving, untouched."""

    @property
    def state(self) -> DeploymentState:
        """The deployment's state while it is at this step."""
        return DeploymentState(self.value)


DeploymentStep.PREPARING = frozenset({
    DeploymentStep.RECEIVED, DeploymentStep.DOWNLOADING, DeploymentStep.VERIFYING, DeploymentStep.BUILDING,
    DeploymentStep.LOADING, DeploymentStep.WARMING, DeploymentStep.VALIDATING, DeploymentStep.SHADOW,
})


class CameraState(_State):
    """A camera's capture (``telemetry/health`` ``cameras[].state``, the ``cameras`` topic; docs/cameras.md)."""

    STARTING = "starting"
    OPEN = "open"
    STALLED = "stalled"
    """Open, but no frame arrived for ``read_timeout_s``: the camera sends nothing; a reopen follows."""
    BLOCKED = "blocked"
    """Open and frames arrive, but nobody took one for ``read_timeout_s``: the agent is behind."""
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    STOPPED = "stopped"
    DISABLED = "disabled"
    """Configured, not opened."""
    REFUSED = "refused"
    """This OpenCV can never open it (e.g. a GStreamer pipeline on the pip wheel)."""

    LIVE: ClassVar[frozenset[CameraState]]
    """States of a camera whose capture is open."""
    NOT_OPENED: ClassVar[frozenset[CameraState]]
    """Configured cameras the agent does not capture from."""


CameraState.LIVE = frozenset({CameraState.OPEN, CameraState.STALLED, CameraState.BLOCKED})
CameraState.NOT_OPENED = frozenset({CameraState.DISABLED, CameraState.REFUSED})


class SessionState(_State):
    """The MQTT session's connection to the broker (``telemetry/health`` ``broker.state``)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    """Waiting before the next connection attempt."""
    REFUSED = "refused"
    """The broker refused the CONNECT (credentials, authorisation): retried, but a person must act."""
    STOPPED = "stopped"

    AWAY: ClassVar[frozenset[SessionState]]
    """Not connected: what is published waits in the outbox."""


SessionState.AWAY = frozenset(set(SessionState) - {SessionState.CONNECTED})


class OutboxState(_State):
    """Where the outbox keeps what waits to be sent (``telemetry/health`` ``outbox_state``)."""

    DISK = "disk"
    MEMORY = "memory"
    """The outbox database takes no writes (full disk, read-only): bounded, lost with the process."""


class SignalState(_State):
    """A drift, bias or leak metric's state (``telemetry/drift|bias|leak`` ``state``; docs/signals.md)."""

    OK = "ok"
    WARN = "warn"
    ALARM = "alarm"
    INSUFFICIENT_SAMPLES = "insufficient_samples"
    """Too few samples in the window to measure."""
    NO_REFERENCE = "no_reference"
    """Drift: the model's manifest has no ``reference`` (``edge-agent model profile`` makes one)."""
    NOT_APPLICABLE = "not_applicable"
    """Bias: the positive rule does not apply (a classifier without ``bias_positive_labels``)."""
    UNAVAILABLE = "unavailable"
    """Leak: the resource cannot be read here (no GPU reader, no NVMAP debugfs)."""

    JUDGED: ClassVar[frozenset[SignalState]]
    """States a measured metric is judged into (through hysteresis)."""
    RAISED: ClassVar[frozenset[SignalState]]
    """Judged states that an alarm event announces."""


SignalState.JUDGED = frozenset({SignalState.OK, SignalState.WARN, SignalState.ALARM})
SignalState.RAISED = frozenset({SignalState.WARN, SignalState.ALARM})


class SliceStatus(_State):
    """Whether one slice of a bias slicing had enough samples to be measured (``telemetry/bias``)."""

    MEASURED = "measured"
    INSUFFICIENT_SAMPLES = SignalState.INSUFFICIENT_SAMPLES.value
