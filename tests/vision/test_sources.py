"""The capture layer against the real demo video, read by real OpenCV capture."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.core.config import SourceSection
from agent.vision.capture import JETSON_CSI_PIPELINE, SourceKind, classify_uri, has_gstreamer, open_capture, redact_uri
from agent.vision.errors import (
    DeviceMissingError,
    PipelineWithoutAppsinkError,
    SourceError,
    SourceUnreachableError,
    UnsupportedSchemeError,
    UnsupportedSourceError,
)
from agent.vision.sources import Frame, FrameSource, Pacer, SourceStats
from agent.wire import CameraState
from tests.support.http import LoopbackServer, RangeHandler

DEMO_VIDEO = Path(__file__).resolve().parents[2] / "demo" / "video.mp4"
WAIT_S = 60.0
"""Generous bound for anything to happen on a busy shared machine; never a measured duration."""
POLL_S = 0.05


@pytest.fixture(scope="module")
def video() -> Path:
    if not DEMO_VIDEO.is_file():
        pytest.fail("demo assets missing: run `make setup` (make test does it)")
    return DEMO_VIDEO


@pytest.fixture(scope="module")
def reference(video: Path) -> list[str]:
    """A digest of every frame of the demo video, decoded straight with OpenCV."""
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    digests = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        digests.append(digest(image))
    capture.release()
    assert len(digests) == int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    return digests


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def section(uri: str | Path, **overrides: Any) -> SourceSection:
    settings: dict[str, Any] = {
        "uri": str(uri), "name": "test-cam", "reopen_min_s": 0.05, "reopen_max_s": 0.2,
    }
    return SourceSection(**(settings | overrides))


@contextmanager
def running(config: SourceSection) -> Iterator[FrameSource]:
    source = FrameSource(config)
    source.start()
    try:
        yield source
    finally:
        assert source.stop(WAIT_S), "the capture thread did not end"


def take_until(source: FrameSource, done: Callable[[SourceStats], bool]) -> SourceStats:
    """Keep taking frames (so an unpaced file keeps going) until ``done(stats)`` holds."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        stats = source.stats()
        if done(stats):
            return stats
        source.get(POLL_S)
    pytest.fail(f"source never reached the expected condition: {source.stats()}")


def place(video: Path, path: Path) -> None:
    """Put a whole copy of the video at ``path`` in one step, like a camera coming back."""
    partial = path.with_suffix(".part")
    shutil.copyfile(video, partial)
    os.replace(partial, path)


def test_unpaced_file_gives_every_frame_in_order_to_a_slow_consumer_then_ends(
    video: Path, reference: list[str]
) -> None:
    taken: list[Frame] = []
    with running(section(video, pace="none", loop=False)) as source:
        while (frame := source.get(WAIT_S)) is not None:
            time.sleep(0.002)
            taken.append(frame)
        stats = source.stats()
        assert source.state is CameraState.ENDED
        assert source.get(0.0) is None
    assert [f.index for f in taken] == list(range(len(reference)))
    assert [digest(f.image) for f in taken] == reference
    assert stats.frames_captured == len(reference)
    assert stats.frames_dropped == 0
    assert stats.reopens == 0 and stats.last_error is None
    first = taken[0]
    assert first.source == "test-cam" and first.image.shape == (480, 640, 3)
    assert all(a.captured_at <= b.captured_at for a, b in itertools.pairwise(taken))


def test_native_pace_overwrites_frames_a_slow_consumer_misses_and_counts_them(video: Path) -> None:
    period = 1.0 / cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS)
    taken: list[Frame] = []
    with running(section(video, pace="native", loop=True)) as source:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if len(taken) >= 5 and source.stats().frames_dropped > 0:
                break
            frame = source.get(WAIT_S)
            assert frame is not None
            taken.append(frame)
            time.sleep(3 * period)
    stats = source.stats()
    assert stats.state is CameraState.STOPPED
    assert stats.frames_dropped > 0
    assert stats.frames_captured - len(taken) - stats.frames_dropped in (0, 1)
    indices = [f.index for f in taken]
    assert indices == sorted(set(indices))


def test_looping_file_goes_on_past_its_last_frame_from_frame_0(
    video: Path, reference: list[str]
) -> None:
    count = len(reference)
    taken: list[Frame] = []
    with running(section(video, pace="none", loop=True)) as source:
        while len(taken) < count + 10:
            frame = source.get(WAIT_S)
            assert frame is not None
            taken.append(frame)
        stats = source.stats()
    assert [f.index for f in taken] == list(range(count + 10))
    assert [digest(f.image) for f in taken[count:]] == reference[:10]
    assert stats.state is CameraState.OPEN
    assert stats.frames_dropped == 0 and stats.reopens == 0


def test_missing_file_reconnects_until_it_appears_then_delivers(
    video: Path, tmp_path: Path
) -> None:
    path = tmp_path / "camera.mp4"
    with running(section(path, pace="none")) as source:
        stats = take_until(source, lambda s: s.reopens >= 2)
        assert stats.state is CameraState.RECONNECTING
        assert stats.last_error is not None and str(path) in stats.last_error
        assert stats.frames_captured == 0 and stats.opened_at is None
        place(video, path)
        take_until(source, lambda s: s.state is CameraState.OPEN and s.frames_captured > 0)
        frame = source.get(WAIT_S)
    assert frame is not None and frame.image.shape == (480, 640, 3)


def truncate(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("cut", [os.remove, truncate], ids=["removed", "truncated"])
def test_file_cut_while_read_recovers_when_restored(
    video: Path, tmp_path: Path, cut: Callable[[Path], None]
) -> None:
    path = tmp_path / "clip.mp4"
    place(video, path)
    with running(section(path, pace="none", loop=True)) as source:
        for _ in range(30):
            assert source.get(WAIT_S) is not None
        cut(path)
        failed = take_until(source, lambda s: s.state is CameraState.RECONNECTING)
        assert failed.last_error is not None and str(path) in failed.last_error
        place(video, path)
        take_until(
            source,
            lambda s: s.state is CameraState.OPEN and s.frames_captured > failed.frames_captured,
        )
        assert source.get(WAIT_S) is not None


@pytest.fixture
def http_video(video: Path) -> Iterator[str]:
    with LoopbackServer(RangeHandler.serving(video.read_bytes())) as server:
        yield server.url("video.mp4")


def test_network_stream_over_http_delivers_frames(http_video: str) -> None:
    with running(section(http_video)) as source:
        assert source.kind is SourceKind.NETWORK
        frames = [source.get(WAIT_S) for _ in range(10)]
        assert source.stats().opened_at is not None
    assert all(f is not None and f.image.shape == (480, 640, 3) for f in frames)


def test_unreachable_stream_reconnects_and_never_shows_its_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with running(section(f"rtsp://admin:s3cret@127.0.0.1:{port}/live")) as source:
        stats = take_until(source, lambda s: s.reopens >= 1)
    assert stats.last_error is not None and f"127.0.0.1:{port}" in stats.last_error
    assert "s3cret" not in stats.last_error
    assert stats.last_error_code == SourceUnreachableError.code
    assert "Connection refused" in stats.last_error
    assert stats.state is CameraState.RECONNECTING


def test_unknown_host_is_unreachable_and_says_so() -> None:
    with pytest.raises(SourceUnreachableError, match=r"nothing answers at no-such-camera\.invalid:554"):
        open_capture("rtsp://u:pw@no-such-camera.invalid/live", read_timeout_s=1.0)


@pytest.mark.parametrize("uri", ["ftp://cam.local/live", "rtmp://u:pw@cam.local/app/stream", "srt://cam:9000"])
def test_wrong_scheme_is_refused_before_any_thread_naming_the_uri_redacted(uri: str) -> None:
    with pytest.raises(UnsupportedSchemeError, match="which no source reads") as caught:
        FrameSource(section(uri))
    assert redact_uri(uri) in str(caught.value) and "pw@" not in str(caught.value)
    assert caught.value.code == "source_scheme"


@pytest.mark.parametrize(
    "pipeline",
    ["videotestsrc ! videoconvert ! autovideosink", "rtspsrc location=rtsp://u:pw@cam ! decodebin ! appsink0"],
)
def test_gstreamer_pipeline_without_appsink_is_refused_whatever_the_build(pipeline: str) -> None:
    with pytest.raises(PipelineWithoutAppsinkError, match="has no appsink") as caught:
        FrameSource(section(pipeline))
    assert "pw@" not in str(caught.value)


def test_file_uri_reads_the_file_it_names(video: Path) -> None:
    with running(section(video.as_uri(), pace="none")) as source:
        assert source.get(WAIT_S) is not None


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedSourceError, match="built without GStreamer"):
        FrameSource(section(JETSON_CSI_PIPELINE))
    with pytest.raises(UnsupportedSourceError, match="GStreamer pipeline"):
        open_capture(JETSON_CSI_PIPELINE)


@pytest.mark.skipif(
    not cv2.videoio_registry.hasBackend(cv2.CAP_V4L2) or Path("/dev/video99").exists(),
    reason="needs the V4L2 backend and no /dev/video99",
)
def test_absent_camera_device_is_an_open_error_naming_it() -> None:
    with pytest.raises(DeviceMissingError, match=r"/dev/video99.*does not exist"):
        open_capture("/dev/video99")
    with pytest.raises(DeviceMissingError, match=r"'/dev/video99' \(source '99'\)"):
        open_capture("99")


@pytest.mark.skipif(Path("/dev/video98").exists(), reason="a camera is plugged in at /dev/video98")
def test_absent_camera_shows_in_stats_and_the_thread_keeps_retrying() -> None:
    with running(section("98")) as source:
        stats = take_until(source, lambda s: s.reopens >= 2)
    assert stats.state is CameraState.RECONNECTING
    assert stats.last_error_code == DeviceMissingError.code
    assert stats.last_error is not None and "/dev/video98" in stats.last_error


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ("  Video I/O:\n    GStreamer:                   NO\n", False),
        ("  Video I/O:\n    GStreamer:                   YES (1.20.3)\n", True),
        ("  Video I/O:\n    FFMPEG:                      YES\n", False),
    ],
)
def test_has_gstreamer_reads_the_build_information(info: str, expected: bool) -> None:
    assert has_gstreamer(info) is expected


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("0", SourceKind.V4L2),
        (" 12 ", SourceKind.V4L2),
        ("/dev/video2", SourceKind.V4L2),
        (JETSON_CSI_PIPELINE, SourceKind.GSTREAMER),
        ("rtspsrc location=rtsp://cam/live latency=0 ! decodebin ! appsink", SourceKind.GSTREAMER),
        ("rtsp://cam.local:554/stream1", SourceKind.NETWORK),
        ("RTSPS://cam.local/stream1", SourceKind.NETWORK),
        ("http://cam.local/mjpeg", SourceKind.NETWORK),
        ("https://cam.local/video.mp4", SourceKind.NETWORK),
        ("demo/video.mp4", SourceKind.FILE),
        ("/data/clips/0.mkv", SourceKind.FILE),
        ("file:///data/clip.mp4", SourceKind.FILE),
        ("clips/cam:1.mp4", SourceKind.FILE),
    ],
)
def test_classify_uri(uri: str, kind: SourceKind) -> None:
    assert classify_uri(uri) is kind


def test_empty_uri_is_rejected() -> None:
    with pytest.raises(UnsupportedSourceError, match="empty"):
        classify_uri("  ")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("rtsp://admin:pw@10.0.0.5:554/s", "rtsp://***@10.0.0.5:554/s"),
        ("rtspsrc location=rtsp://u:p@cam ! appsink", "rtspsrc location=rtsp://***@cam ! appsink"),
        ("/data/clip.mp4", "/data/clip.mp4"),
        ("http://cam.local/a@b", "http://cam.local/a@b"),
    ],
)
def test_redact_uri_hides_credentials(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)],
    ids=["gray", "float", "empty"],
)
def test_frame_accepts_only_bgr_uint8_images(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Frame(0, image, 0.0, 0.0, "cam")


def test_pacer_keeps_a_schedule_and_restarts_it_when_far_behind() -> None:
    pacer = Pacer(0.1)
    assert pacer.delay(0.0) == 0.0
    assert pacer.delay(0.03) == pytest.approx(0.07)
    assert pacer.delay(0.25) == 0.0
    assert pacer.delay(0.26) == pytest.approx(0.04)
    assert pacer.delay(1.0) == 0.0
    assert pacer.delay(1.0) == pytest.approx(0.1)


def test_stop_ends_a_reconnecting_source_and_get_returns_none(tmp_path: Path) -> None:
    source = FrameSource(section(tmp_path / "never.mp4", reopen_min_s=0.5, reopen_max_s=0.5))
    source.start()
    with pytest.raises(SourceError, match="already started"):
        source.start()
    take_until(source, lambda s: s.state is CameraState.RECONNECTING)
    assert source.stop(WAIT_S)
    assert source.state is CameraState.STOPPED
    assert source.get(1.0) is None
