"""The live view's track ids, on the real results publisher (norfair's tracker) in front of it as in
the daemon: a box is labelled with the id of the track it continued, on a filled tag, and the page
lists the camera's tracked objects."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from agent.core.config import LiveViewSection
from agent.device.liveview import BOX_COLOR, LABEL_PAD, LABEL_SCALE, LiveView, annotate, box_label
from agent.monitor.telemetry import Telemetry
from agent.results import RateSettings, ResultsPublisher, ResultsSettings, TrackedObject
from agent.vision.pipeline import FrameResult
from agent.vision.sources import Frame
from agent.vision.transforms import Detection, Prediction
from agent.wire.topics import Topics

TOPICS = Topics("edge", "dev1")
IMAGE = np.zeros((480, 640, 3), np.uint8)
SETTINGS = ResultsSettings(rate=RateSettings(mode="every_frame"))
TAG_PIXELS = 150
"""Box-coloured pixels a label's filled tag leaves after an opening that wipes the 2 px outlines:
a tag is about 15 px high and 60 or more wide."""


def detections() -> tuple[Detection, ...]:
    return (Detection((40.0, 100.0, 200.0, 140.0), 0.9, "text"), Detection((300.0, 200.0, 500.0, 260.0), 0.8, "text"))


def frame_result(index: int) -> FrameResult:
    frame = Frame(index=index, image=IMAGE, captured_at=time.monotonic(), wall_time=time.time(), source="front")
    return FrameResult(frame, "text-det", "v4", {}, Prediction("text_detect", detections()), True)


def tag_pixels(image: np.ndarray) -> int:
    """Box-coloured pixels in solid areas (labels' tags), the boxes' thin outlines opened away."""
    difference = np.abs(image[:, :, :3].astype(np.int16) - np.array(BOX_COLOR, dtype=np.int16))
    mask = np.all(difference <= 60, axis=-1).astype(np.uint8)
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return int(np.count_nonzero(cv2.morphologyEx(closed, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))))


def watched() -> tuple[ResultsPublisher, LiveView]:
    """The publisher and the live view, observers of the frame loop in the daemon's order."""
    telemetry = Telemetry(TOPICS, "dev1", "test")
    results = ResultsPublisher(telemetry, TOPICS, lambda name: SETTINGS if name == "front" else None,
                               Path("/nonexistent"))
    view = LiveView(LiveViewSection(), lambda: ["front"], lambda name: SETTINGS, results.tracks)
    for index in range(1, 4):
        result = frame_result(index)
        results.observe(result)
        view.observe(result)
    return results, view


def test_a_box_s_label_names_its_track_id_and_an_untracked_one_has_none():
    box = detections()[0]
    assert box_label(box, 7) == "#7 text 0.90"
    assert box_label(box, None) == "text 0.90"


def test_the_live_view_draws_the_track_ids_of_the_publisher_s_tracker_on_the_frame():
    results, view = watched()
    tracked = view.tracked("front")
    assert [t.track_id for t in tracked] == [t.track_id for t in results.tracks("front", 3)]
    assert len({t.track_id for t in tracked}) == 2 and all(t.matched for t in tracked)
    assert results.tracks("front", 2) == (), "only the frame last seen"
    encoded = view.jpeg("front")
    assert encoded is not None and encoded.frame_id == 3
    shown = cv2.imdecode(np.frombuffer(encoded.jpeg, np.uint8), cv2.IMREAD_COLOR)
    seen = tuple(t.detection for t in tracked if t.detection is not None)  # the frame's own boxes
    assert len(seen) == 2
    assert np.array_equal(shown, cv2.imdecode(cv2.imencode(
        ".jpg", annotate(IMAGE, seen, SETTINGS, tracked),
        [cv2.IMWRITE_JPEG_QUALITY, view.settings.jpeg_quality])[1], cv2.IMREAD_COLOR))
    assert tag_pixels(shown) >= 2 * TAG_PIXELS


def test_the_tag_holds_the_track_id_s_text():
    box = detections()[0]
    track = TrackedObject(12, "text", box.box, box.score, True, box)
    with_id = annotate(IMAGE, (box,), None, (track,))
    without = annotate(IMAGE, (box,), None)
    (id_width, _), _ = cv2.getTextSize(box_label(box, 12), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)
    (plain_width, _), _ = cv2.getTextSize(box_label(box, None), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)
    tag_row = with_id[100 - 2 * LABEL_PAD - 2, :, :]
    magenta = np.flatnonzero(np.all(tag_row == BOX_COLOR, axis=-1))
    assert magenta.max() - magenta.min() + 1 == id_width + 2 * LABEL_PAD + 1
    assert id_width > plain_width
    assert not np.array_equal(with_id, without)
    assert tag_pixels(with_id) > tag_pixels(without) >= TAG_PIXELS


def test_the_page_lists_the_tracked_objects_of_each_camera():
    _, view = watched()
    page = view.page(None)
    for track in view.tracked("front"):
        assert f'<li data-track="{track.track_id}">#{track.track_id} text' in page
