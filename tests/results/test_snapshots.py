"""Snapshots: off by default; when on, the best frame of an object's life written as a bounded JPEG
into a folder that keeps to its retention. On the real detector over the demo video and on the
demo photos."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.results import (
    FolderSink,
    ResultEvent,
    ResultsSettings,
    Scene,
    Snapshots,
    SnapshotSettings,
    TrackedObject,
    Tracker,
    TrackerSettings,
    encode_jpeg,
)
from tests.results.test_recognize import DEMO, Detector, needs_rec, video_frames
from tests.results.test_tracks import FPS

PAGE_TO_ASTRONAUT = range(76, 106, 2)
"""Page lines tracked, then lost when the astronaut comes (frame 90)."""


def astronaut() -> np.ndarray:
    image = cv2.imread(str(DEMO / "images" / "astronaut.png"))
    assert image is not None
    return image


def person(track_id: int, score: float, box: tuple[float, float, float, float] = (100, 50, 300, 450)) -> TrackedObject:
    return TrackedObject(track_id, "person", box, score, True)


def left(track_id: int, ts: float = 5.0) -> ResultEvent:
    return ResultEvent("object_left", 3, ts, track_id, "person", (100, 50, 300, 450), dwell_s=1.0)


def test_snapshots_are_off_by_default_and_write_nothing(tmp_path: Path) -> None:
    settings = ResultsSettings().snapshots
    assert settings.enabled is False
    snapshots = Snapshots("front", settings, FolderSink(tmp_path, settings))
    snapshots.observe(astronaut(), 0, [person(1, 0.9)])
    assert snapshots.on_event(left(1)) is None
    assert list(tmp_path.iterdir()) == [] and snapshots.written == 0


@needs_rec
def test_each_page_line_leaving_gets_its_best_frame_as_a_bounded_jpeg(tmp_path: Path) -> None:
    settings = SnapshotSettings(enabled=True, max_side=320, max_bytes=30_000)
    snapshots = Snapshots("front", settings, FolderSink(tmp_path, settings))
    detector, tracker = Detector(), Tracker(TrackerSettings(max_missed_frames=3))
    scene = Scene(ResultsSettings())
    names = []
    for index, frame in video_frames(PAGE_TO_ASTRONAUT):
        objects = tracker.update(detector(frame).items)
        events = scene.update(index, index / FPS, objects)
        snapshots.observe(frame, index, objects)
        names += [(e.kind, snapshots.on_event(e)) for e in events]
    written = [name for kind, name in names if kind == "object_left"]
    assert len(written) >= 4 and all(written), names
    assert all(name is None for kind, name in names if kind != "object_left"), "only object_left asked for"
    files = sorted((tmp_path / "front").iterdir())
    assert [f"front/{f.name}" for f in files] == sorted(n for n in written if n)
    for path in files:
        data = path.read_bytes()
        assert len(data) <= settings.max_bytes
        picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and max(picture.shape[:2]) == settings.max_side
    assert snapshots.written == len(files)


def test_a_cropped_snapshot_is_the_box_with_its_margin_and_the_best_score_wins(tmp_path: Path) -> None:
    settings = SnapshotSettings(enabled=True, crop=True, crop_margin=0.1, draw_boxes=False)
    snapshots = Snapshots("front", settings, FolderSink(tmp_path, settings))
    frame = astronaut()
    snapshots.observe(frame, 0, [person(1, 0.6, (0, 0, 100, 100))])
    snapshots.observe(frame, 1, [person(1, 0.9)])  # the best: 200x400 box at (100, 50)
    snapshots.observe(frame, 2, [person(1, 0.7, (0, 0, 100, 100))])
    name = snapshots.on_event(left(1))
    assert name is not None and name.endswith("-f1.jpg")
    picture = cv2.imread(str(tmp_path / name))
    assert picture.shape[:2] == (480, 240), "400 + 2 x 40 high, 200 + 2 x 20 wide"
    expected = frame[10:490, 80:320]
    assert np.abs(picture.astype(int) - expected.astype(int)).mean() < 8, "the JPEG of that part of the frame"


def test_boxes_are_drawn_only_when_asked(tmp_path: Path) -> None:
    frame = np.full((200, 200, 3), 40, np.uint8)
    pictures = []
    for draw in (True, False):
        settings = SnapshotSettings(enabled=True, draw_boxes=draw, quality=95)
        snapshots = Snapshots(f"cam{int(draw)}", settings, FolderSink(tmp_path, settings))
        snapshots.observe(frame, 0, [person(1, 0.9, (50, 50, 150, 150))])
        name = snapshots.on_event(left(1))
        pictures.append(cv2.imread(str(tmp_path / str(name))))
    drawn, plain = pictures
    assert drawn[50, 100].tolist() == pytest.approx([0, 200, 255], abs=30), "the box's edge"
    assert plain[50, 100].tolist() == pytest.approx([40, 40, 40], abs=4)


def test_a_jpeg_too_large_is_made_to_fit_by_lower_quality_then_a_smaller_picture() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    full = encode_jpeg(noise, 95, 10_000_000)
    fitted = encode_jpeg(noise, 95, 40_000)
    assert len(full) > 200_000 and len(fitted) <= 40_000
    assert cv2.imdecode(np.frombuffer(fitted, np.uint8), cv2.IMREAD_COLOR).shape[1] < 640


def test_the_folder_keeps_to_its_retention_by_age_then_by_size(tmp_path: Path) -> None:
    settings = SnapshotSettings(enabled=True, retention_s=3600.0, retention_bytes=1_000_000)
    sink = FolderSink(tmp_path, settings)
    now = 1_800_000_000.0
    ages = {"old": 7200.0, "a": 300.0, "b": 200.0, "c": 100.0}
    for name, age in ages.items():
        path = sink.write("front", name, b"\xff" * 400_000)
        os.utime(path, (now - age, now - age))
    deleted = sink.prune(now)
    assert [p.stem for p in deleted] == ["old", "a"], "too old, then the oldest while above 1 MB"
    assert sorted(p.stem for p in (tmp_path / "front").iterdir()) == ["b", "c"]
    assert not list(tmp_path.glob("*/*.part"))
