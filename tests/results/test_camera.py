"""One camera's results end to end on the real detector over the demo video (page, then astronaut):
tracks, zone counts, events with snapshots, the rate, and the payloads built from them."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from agent.results import (
    CameraResults,
    RateSettings,
    ResultsSettings,
    SnapshotSettings,
    TrackerSettings,
    ZoneSettings,
    counts_payload,
    event_payload,
    results_payload,
)
from agent.vision.transforms import Detection, Prediction
from agent.wire import ModelRef, encode_payload
from tests.results.test_recognize import Detector, needs_rec, video_frames
from tests.results.test_tracks import FPS

FRAMES = range(70, 112, 2)
"""Page lines (to frame 89), then the astronaut (no text)."""
COST_ROUNDS = 20
"""The clip's frames replayed this many times when the cost per frame is measured."""
SETTINGS = ResultsSettings(
    tracker=TrackerSettings(max_missed_frames=3),
    zones=(
        ZoneSettings(name="left", polygon=((0, 0), (320, 0), (320, 480), (0, 480))),
        ZoneSettings(name="right", polygon=((320, 0), (640, 0), (640, 480), (320, 480))),
    ),
    rate=RateSettings(mode="on_change"),
    snapshots=SnapshotSettings(enabled=True, max_side=320),
)


@pytest.fixture(scope="module")
def clip() -> list[tuple[int, np.ndarray, tuple[Detection, ...]]]:
    detector = Detector()
    return [(index, frame, detector(frame).items) for index, frame in video_frames(FRAMES)]  # type: ignore[misc]


@needs_rec
def test_a_camera_gives_counts_on_change_results_on_a_change_of_tracks_and_events_with_pictures(
    clip: list[tuple[int, np.ndarray, tuple[Detection, ...]]], tmp_path: Path
) -> None:
    camera = CameraResults("front", SETTINGS, tmp_path)
    model = ModelRef(name="text-det", version="v4")
    published, counts_seen, events = [], [], []
    for seq, (index, frame, detections) in enumerate(clip, start=1):
        outcome = camera.on_frame(frame, index, index / FPS, index / FPS, detections)
        if outcome.publish:
            payload = results_payload(device_id="box", seq=seq, ts=time.time(), camera="front", frame_id=index,
                                      capture_ts=index / FPS, width=640, height=480, model=model,
                                      prediction=Prediction("text_detect", detections), tracked=outcome.tracked)
            published.append(json.loads(encode_payload(payload)))
        if outcome.counts is not None:
            counts_seen.append(outcome.counts)
            counts_payload(device_id="box", seq=seq, ts=time.time(), camera="front", frame_id=index,
                           capture_ts=index / FPS, counts=outcome.counts)
        for event, picture in outcome.events:
            events.append(event_payload(device_id="box", seq=len(events) + 1, ts=time.time(), camera="front",
                                        event=event, snapshot=picture))
    frame_ids = [p["frame_id"] for p in published]
    assert frame_ids == sorted(set(frame_ids)) and 2 <= len(published) < len(clip), frame_ids
    tracked_texts = [sum(t["track_id"] is not None for t in p["prediction"]["texts"]) for p in published]
    assert max(tracked_texts) >= 4, tracked_texts
    totals = [sum(n for zone in c.values() for n in zone.values()) for c in counts_seen]
    assert max(totals) >= 4 and totals[-1] == 0, counts_seen
    assert all(a != b for a, b in itertools.pairwise(counts_seen)), "counts only when they change"
    left = [e for e in events if e.kind == "object_left"]
    assert len(left) >= 4 and all(e.data["snapshot"] for e in left)
    assert {e.kind for e in events} >= {"object_entered", "zone_entered", "zone_left", "object_left"}
    assert len(list((tmp_path / "snapshots" / "front").glob("*.jpg"))) == len(left)


@needs_rec
def test_the_same_clip_replayed_gives_the_same_events_each_time_and_its_cost_per_frame_is_printed(
    clip: list[tuple[int, np.ndarray, tuple[Detection, ...]]], tmp_path: Path
) -> None:
    """Tracking is deterministic: every replay (its tracks all lost by its end) gives the same
    events. The cost is printed, not bounded: a shared CPU's noise would break a bound."""
    settings = SETTINGS.model_copy(update={"snapshots": SnapshotSettings()})
    camera = CameraResults("front", settings, tmp_path)
    rounds = []
    started = time.perf_counter()
    for round_ in range(COST_ROUNDS):
        kinds = []
        for index, frame, detections in clip:
            frame_id = round_ * 1000 + index
            outcome = camera.on_frame(frame, frame_id, frame_id / FPS, frame_id / FPS, detections)
            kinds += [(e.kind, e.zone) for e, _ in outcome.events]
        rounds.append(kinds)
    per_frame_us = 1e6 * (time.perf_counter() - started) / (COST_ROUNDS * len(clip))
    boxes = sum(len(d) for _, _, d in clip) / len(clip)
    print(f"results (tracker, 2 zones, rate; snapshots off): {per_frame_us:.0f} us per frame, {boxes:.1f} boxes")
    assert rounds[0] and all(r == rounds[0] for r in rounds)
