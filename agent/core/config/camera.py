"""``[[camera]]`` (and the deprecated ``[source]``): where frames come from, at what rate, which region."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.core.config.base import Section
from agent.core.config.results import ResultsSettings
from agent.core.names import TopicError, check_segment

__all__ = ["CAMERA_SCHEMES", "CameraSection", "SourceSection", "camera_from_source", "check_camera_set"]


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
