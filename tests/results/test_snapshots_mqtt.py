"""Snapshots over MQTT, on real parts: the results publisher, a real session to a real mosquitto, the real
egress guard. A camera whose ``results.snapshots`` are enabled with ``sink = "mqtt"`` sends each event's
picture as the bytes of one JPEG on ``snapshots/<camera>``, counted by the guard; one whose snapshots are
off (the default) sends none."""

from __future__ import annotations

import asyncio
import json
import time

import cv2
import numpy as np

from agent.monitor.telemetry import Telemetry
from agent.results import RateSettings, ResultsPublisher, ResultsSettings, SnapshotSettings
from agent.vision.pipeline import FrameResult
from agent.vision.sources import Frame
from agent.vision.transforms import Detection, Prediction
from tests.support.monitor_support import video
from tests.support.mosquitto import Mosquitto, poll
from tests.support.results_rig import TOPICS, WAIT_S, publishing, results_publisher, session

SNAPSHOTS = SnapshotSettings(enabled=True, sink="mqtt", events=("object_entered",), max_side=320)
CAMERAS = {
    "front": ResultsSettings(rate=RateSettings(mode="every_frame"), snapshots=SNAPSHOTS),
    "back": ResultsSettings(rate=RateSettings(mode="every_frame"),
                            snapshots=SnapshotSettings(sink="mqtt", events=("object_entered",))),
}
"""``back`` names the MQTT sink but leaves snapshots off (the default)."""


def frame_result(camera: str, index: int, image: np.ndarray) -> FrameResult:
    """Frame ``index`` of ``camera`` on which the detector saw two boxes."""
    boxes = tuple(Detection((40.0 + 200 * i, 100.0, 180.0 + 200 * i, 160.0), 0.9, "text") for i in range(2))
    frame = Frame(index=index, image=image, captured_at=time.monotonic(), wall_time=time.time(), source=camera)
    return FrameResult(frame, "text-det", "v4", {}, Prediction("text_detect", boxes), True)


def test_a_snapshot_goes_on_the_camera_s_topic_as_a_jpeg_only_when_enabled(tmp_path, mqtt_probe):
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    probe = mqtt_probe(broker.port, [f"{TOPICS.base}/snapshots/+", TOPICS.events])
    link = session(broker.url)
    results = results_publisher(link, CAMERAS.get, tmp_path / "state")
    guard = results.telemetry.egress
    image = cv2.resize(video()[60], (640, 480))

    async def scenario() -> None:
        async with publishing(link, results):
            for index in range(3):  # seen on frame 0, an object (with an id) from frame 1
                for camera in CAMERAS:
                    results.observe(frame_result(camera, index, image))
            await asyncio.to_thread(poll, lambda: len(probe.snapshot(TOPICS.snapshots("front"))) == 2
                                    and len(probe.snapshot(TOPICS.events)) == 4, WAIT_S, "two pictures, four events")

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()
    pictures = probe.snapshot(TOPICS.snapshots("front"))
    for picture in pictures:
        assert picture.payload[:3] == b"\xff\xd8\xff" and picture.payload[-2:] == b"\xff\xd9", "one JPEG"
        assert picture.qos == 1 and not picture.retain
        decoded = cv2.imdecode(np.frombuffer(picture.payload, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape[:2] == (240, 320), "scaled to max_side"
        assert len(picture.payload) <= SNAPSHOTS.max_bytes
    assert probe.snapshot(TOPICS.snapshots("back")) == [], "snapshots off: no picture"
    events = [json.loads(m.payload) for m in probe.snapshot(TOPICS.events)]
    named = {e["data"]["camera"]: e["data"]["snapshot"] for e in events}
    assert named["back"] is None
    assert str(named["front"]).startswith("front/") and str(named["front"]).endswith(".jpg")
    assert not (tmp_path / "state").exists(), "nothing written to a folder"
    counts = guard.counts()
    assert counts["images"] == 2 and counts["image_bytes"] == sum(len(p.payload) for p in pictures)
    assert results.health()["snapshots_sent"] == 2
    assert results.health()["snapshots_dropped_offline"] == results.health()["snapshots_blocked"] == 0


BOUND = 2_000_000
"""The hand-over's bound on pictures' bytes for the test: a few of its ~300 kB pictures."""


def test_pictures_waiting_for_the_loop_are_bounded_in_bytes_and_the_rest_counted_events_kept(tmp_path, monkeypatch):
    import agent.results.publisher

    monkeypatch.setattr(agent.results.publisher, "HANDOFF_PICTURE_BYTES", BOUND)
    noisy = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # JPEGs of ~300 kB
    settings = ResultsSettings(rate=RateSettings(mode="every_frame"), snapshots=SnapshotSettings(
        enabled=True, sink="mqtt", events=("object_entered",), quality=100, max_bytes=10_000_000))
    telemetry = Telemetry(TOPICS, "dev1", "test")
    results = ResultsPublisher(telemetry, TOPICS, lambda name: settings, tmp_path / "state")
    boxes = tuple(Detection((10.0 + 30 * i, 10.0 + 20 * (i % 20), 35.0 + 30 * i, 28.0 + 20 * (i % 20)), 0.9, "text")
                  for i in range(20))
    for index in range(12):  # no loop takes them: the bytes of the pictures waiting grow
        frame = Frame(index=index, image=noisy, captured_at=time.monotonic(), wall_time=time.time(), source="front")
        results.observe(FrameResult(frame, "text-det", "v4", {}, Prediction("text_detect", boxes), True))
    waiting = [o for o in results._queue]
    kept = sum(len(p.data) for o in waiting for p in o.pictures)
    assert 0 < kept <= BOUND
    assert results.snapshots_dropped_queue > 0 and results.failures.count == 0
    assert sum(len(o.events) for o in waiting) == 20, "every object's event is kept, with or without its picture"
    assert sum(len(o.pictures) for o in waiting) + results.snapshots_dropped_queue == 20
