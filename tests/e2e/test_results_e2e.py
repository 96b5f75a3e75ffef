"""The cameras' results end to end: the real agent subprocess, a real mosquitto, the demo model
(text-det v4) over the demo video (a slideshow: the handwriting and the page, then four photos
without text, 3 s each at 15 fps, looping).

Results arrive per camera with rising frame ids and boxes on the text photos; object events
go through the outbox and arrive in order, none lost, across a broker restart; the retained
zone counts follow the slideshow. Snapshots go on ``snapshots/<camera>`` as JPEGs only when
enabled with ``sink = "mqtt"``; with ``second_stage = "text-rec"`` the results carry the text
the recognizer read, words that are on the page photo (its scene of the video, every frame inferred).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.models.store import ModelStore
from tests.support.agentproc import AgentProcess, agent_config
from tests.support.faultkit import OutboxView, log_events, payloads_by_seq
from tests.support.mosquitto import MqttProbe, poll
from tests.support.page_scene import page_clip

pytestmark = pytest.mark.slow

DEVICE = "dev1"
CAMERA = "front"
RESULTS = f"edge/{DEVICE}/results/{CAMERA}"
COUNTS = f"edge/{DEVICE}/counts/{CAMERA}"
EVENTS = f"edge/{DEVICE}/events"
SNAPSHOTS = f"edge/{DEVICE}/snapshots/{CAMERA}"
HEALTH = f"edge/{DEVICE}/telemetry/health"
WAIT_S = 45.0
"""Generous for a shared machine; one loop of the video is 18 s."""
LOOPS_S = 180.0
"""For what may take several loops of the video on a starved machine (an agent inferring a frame a second
sees the page photo two or three times a loop); never an expectation of speed."""
VIDEO_FRAMES = 270
"""The demo video's frames: index % 270 is the frame of the slideshow (the source numbers every
frame it decodes, looping included)."""
HANDWRITING = range(3, 45)
"""Frames showing the handwritten formulas (text.png): one or two boxes on most of them."""
PAGE = range(50, 88)
"""The printed page (page.png): its six lines."""
NO_TEXT = (*range(93, 132), *range(230, 268))
"""The astronaut and the rocket: no text (the coffee and the cat, between them, get a false box or two)."""
OBJECT_EVENTS = {"object_entered", "object_left", "zone_entered", "zone_left", "line_crossed"}
ZONE = """
[[camera.results.zones]]
name = "frame"
polygon = [[0, 0], [640, 0], [640, 480], [0, 480]]
labels = ["text"]
"""


def body(message: Any) -> dict[str, Any]:
    return json.loads(message.payload)  # type: ignore[no-any-return]


def camera_config(tmp: Path, demo: Path, url: str, results: str = "", **overrides: dict[str, Any]) -> Path:
    """The test agent's config with one ``[[camera]]`` (the demo video) and its results table;
    ``overrides`` as agent_config takes them."""
    path = agent_config(tmp, demo, url, **overrides)
    head = path.read_text().partition("[[camera]]\n")[0]
    camera = f'[[camera]]\nname = "{CAMERA}"\nuri = "{demo / "video.mp4"}"\n\n[camera.results.tracker]\n' \
             f'max_missed_frames = 3\n{results}\n'
    path.write_text(head + camera)
    return path


def test_results_arrive_per_camera_with_rising_frame_ids_and_boxes_on_the_text_photos(
        tmp_path, demo_dir, mosquitto, mqtt_probe):
    probe = mqtt_probe(mosquitto.port, [RESULTS, HEALTH, f"edge/{DEVICE}/snapshots/+"])

    def tracked_on_page(message: Any) -> bool:
        result = body(message)
        return result["frame_id"] % VIDEO_FRAMES in PAGE and any(
            item["track_id"] is not None for item in result["prediction"]["texts"])

    agent = AgentProcess(camera_config(tmp_path, demo_dir, mosquitto.url))
    try:
        # A loop of the video from the first result: every photo seen while connected (what came before the
        # connection was dropped, and a starved agent connects seconds into the first loop).
        first = body(probe.wait_for(lambda m: m.topic == RESULTS, timeout=LOOPS_S, what="a result"))["frame_id"]
        probe.wait_for(lambda m: m.topic == RESULTS and body(m)["frame_id"] - first >= VIDEO_FRAMES,
                       timeout=LOOPS_S, what="results of a whole loop of the video")
        # A track's id comes on the second frame that sees its box (confirm_frames = 1): a starved agent may
        # infer the page once in a loop, so the tracked boxes on it are waited for over further loops.
        probe.wait_for(lambda m: m.topic == RESULTS and tracked_on_page(m), timeout=LOOPS_S,
                       what="tracked boxes on the page photo carrying their id")
        health = body(probe.wait_for(lambda m: m.topic == HEALTH and body(m)["results"]["published"] > 0,
                                     what="health counting the results"))
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    results = [body(m) for m in probe.snapshot(RESULTS)]
    frames = [r["frame_id"] for r in results]
    assert frames == sorted(set(frames)), "frame ids rise, each once"
    # Results made before the first connection are dropped, not queued, and counted; none after.
    seqs = [r["seq"] for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert health["results"]["dropped_offline"] == seqs[0] - 1
    first = results[0]
    assert first["camera"] == CAMERA and (first["width"], first["height"]) == (640, 480)
    assert first["model"] == {"name": "text-det", "version": "v4"}
    assert {r["prediction"]["head"] for r in results} == {"text_detect"}

    # The rate: at most 5 a second (the default), so a 15 fps camera gives about a third of its frames.
    span_s = results[-1]["capture_ts"] - results[0]["capture_ts"]
    assert len(results) <= 5 * span_s + 2
    # The limiter held frames back, unless the engine itself ran under the rate (a loaded machine):
    # then every frame inferred was published, dropped offline or is still pending at the publisher, and
    # there was nothing to hold; the one frame of the camera's worker that may be between inference and
    # the results as the report is taken is the only other difference (seen on a starved machine: 3
    # inferred, 2 published, 0 held).
    figures = health["results"]
    counted = figures["published"] + figures["dropped_offline"] + figures["pending"]
    assert figures["held"] > 0 or health["frames_processed"] <= counted + 1, health

    texts = {r["frame_id"]: r["prediction"]["texts"] for r in results}
    on_writing = [t for f, t in texts.items() if f % VIDEO_FRAMES in HANDWRITING]
    on_page = [t for f, t in texts.items() if f % VIDEO_FRAMES in PAGE]
    without = [t for f, t in texts.items() if f % VIDEO_FRAMES in NO_TEXT]
    assert on_writing and on_page and without
    assert min(len(t) for t in on_page) >= 5, "the page's lines, on every frame of it"
    assert sum(bool(t) for t in on_writing) >= 0.6 * len(on_writing), "boxes on the handwriting"
    assert sum(len(t) for t in without) <= 0.2 * len(without), "next to none on the photos without text"
    box = on_page[0][0]
    assert all(0.0 <= v <= 1.0 for point in box["polygon_norm"] for v in point)
    assert all(0.0 <= x <= 640 and 0.0 <= y <= 480 for x, y in box["polygon"])
    assert all(r["second_stage"] is None for r in results) and all(
        item["text"] is None for t in texts.values() for item in t), "no second stage named: no text"
    assert not [m for m in probe.snapshot() if "/snapshots/" in m.topic], "snapshots off (the default): none"


SNAPSHOTS_ON = """
[camera.results.snapshots]
enabled = true
sink = "mqtt"
events = ["object_entered"]
max_side = 320
"""
PAGE_WORDS = ("determine", "markers", "object")
"""Printed on the page photo, whole on the frames PAGE_CLIP (tests/results/test_recognize.py reads them
from frame 60)."""
PAGE_CLIP = range(55, 66)
"""Frames of the video's page scene (45-89) that show the part of the page holding PAGE_WORDS."""


def test_snapshots_over_mqtt_arrive_as_jpegs_on_the_cameras_topic_when_enabled(
        tmp_path, demo_dir, mosquitto, mqtt_probe):
    probe = mqtt_probe(mosquitto.port, [SNAPSHOTS, EVENTS, HEALTH])
    agent = AgentProcess(camera_config(tmp_path, demo_dir, mosquitto.url, SNAPSHOTS_ON))
    try:
        poll(lambda: len(probe.snapshot(SNAPSHOTS)) >= 3, WAIT_S, "three snapshots on the camera's topic")
        health = body(probe.wait_for(lambda m: m.topic == HEALTH and body(m)["results"]["snapshots_sent"] >= 3,
                                     what="health counting the snapshots"))
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    for picture in probe.snapshot(SNAPSHOTS):
        assert picture.payload[:3] == b"\xff\xd8\xff" and picture.payload[-2:] == b"\xff\xd9"
        image = cv2.imdecode(np.frombuffer(picture.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and max(image.shape[:2]) <= 320
    named = [body(m)["data"]["snapshot"] for m in probe.snapshot(EVENTS) if body(m)["kind"] == "object_entered"]
    assert named and all(str(n).startswith(f"{CAMERA}/") and str(n).endswith(".jpg") for n in named)
    assert health["results"]["snapshots_blocked"] == 0
    assert not (tmp_path / "state" / "snapshots").exists(), "sent, not written to the folder"


def test_the_second_stage_reads_the_words_of_the_page_photo_into_the_results(
        tmp_path, demo_dir, mosquitto, mqtt_probe):
    # The frames of the page scene that show PAGE_WORDS whole, every one inferred and published: the pan
    # shows a word whole on some frames only, which a starved agent dropping frames at 15 fps could miss
    # loop after loop.
    clip = page_clip(tmp_path / "page.mp4", PAGE_CLIP)
    config = camera_config(tmp_path, demo_dir, mosquitto.url, '[camera.results.rate]\nmode = "every_frame"\n')
    config.write_text(config.read_text().replace(
        "[camera.results.tracker]", '[camera.results]\nsecond_stage = "text-rec"\n\n[camera.results.tracker]', 1)
        .replace(f'uri = "{demo_dir / "video.mp4"}"', f'uri = "{clip}"\npace = "none"', 1))
    ModelStore(tmp_path / "engines").install(demo_dir / "models" / "text-rec-v4")
    probe = mqtt_probe(mosquitto.port, [RESULTS])

    def read() -> list[str]:
        return [item["text"] for m in probe.snapshot(RESULTS) for item in body(m)["prediction"]["texts"]
                if item["text"]]

    agent = AgentProcess(config)
    try:
        try:
            poll(lambda: all(any(word in t for t in read()) for word in PAGE_WORDS), LOOPS_S,
                 "the page's words in the results")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; read {sorted(set(read()))[:40]}; the agent's log ends:\n"
                                 f"{agent.log()[-4000:]}") from None
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    results = [body(m) for m in probe.snapshot(RESULTS)]
    with_text = [r for r in results if any(item["text"] for item in r["prediction"]["texts"])]
    assert all(r["second_stage"] == {"name": "text-rec", "version": "v4"} for r in with_text)
    assert all(0.0 <= item["text_confidence"] <= 1.0 for r in with_text for item in r["prediction"]["texts"])
    assert "second_stage_serving" in agent.log()


def test_object_events_arrive_in_order_none_lost_across_a_broker_restart(
        tmp_path, demo_dir, mqtt_probe, persistent_broker):
    broker = persistent_broker
    probe = mqtt_probe(broker.port, [EVENTS, HEALTH], persistent=True)
    agent = AgentProcess(camera_config(tmp_path, demo_dir, broker.url, ZONE))
    outbox = OutboxView(tmp_path / "state" / "outbox.sqlite3")

    def object_events() -> list[dict[str, Any]]:
        """In seq order, one per seq: across the broker restart a QoS 1 event can arrive twice, and a copy
        counted as a third object_left let the wait end while only two tracks had left."""
        ordered = [json.loads(copies[0]) for _, copies in sorted(payloads_by_seq(probe.snapshot(EVENTS)).items())]
        return [e for e in ordered if e["kind"] in OBJECT_EVENTS]

    try:
        poll(lambda: len(object_events()) >= 5, WAIT_S, "the first object events")
        probe.wait_for(lambda m: m.topic == HEALTH, what="a health report")
        dropped_before = body(probe.snapshot(HEALTH)[-1])["results"]["dropped_offline"]
        broker.stop()
        down = time.time()
        poll(lambda: any(json.loads(p)["kind"] in OBJECT_EVENTS for t, p in outbox.messages() if t == EVENTS),
             WAIT_S, "object events queued while the broker is down")
        # Down until the agent itself has counted results dropped offline (its queued health says so):
        # a loaded machine may take longer to see the broker gone than to queue the first event.
        poll(lambda: any(json.loads(p)["results"]["dropped_offline"] > dropped_before
                         for t, p in outbox.messages() if t == HEALTH), WAIT_S,
             "a queued health report counting results dropped while the broker is down")
        broker.start()
        probe.wait_for(lambda m: m.topic == EVENTS and body(m)["ts"] > down and body(m)["kind"] == "object_left",
                       timeout=WAIT_S, what="events made during the outage")
        # At least one reconnect: a loaded machine may see the session try more than once.
        probe.wait_for(lambda m: m.topic == HEALTH and body(m)["broker"]["reconnects"] >= 1
                       and body(m)["results"]["dropped_offline"] > dropped_before,
                       timeout=WAIT_S, what="health counting the results dropped while the broker was away")
        poll(lambda: sum(e["kind"] == "object_left" for e in object_events()) >= 3, WAIT_S,
             "three objects to have left")
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    assert len(log_events(agent.log(), "mqtt_connected")) == 2
    last = outbox.sequences()["events"]
    poll(lambda: set(payloads_by_seq(probe.snapshot(EVENTS))) == set(range(1, last + 1)), WAIT_S,
         f"every event 1..{last} to arrive")
    assert outbox.dropped() == 0
    seen = object_events()
    assert any(e["ts"] < down for e in seen) and any(e["ts"] > down for e in seen)
    frames = [e["data"]["frame_id"] for e in seen]
    assert frames == sorted(frames), "events in the order the frames were seen"
    # Each track's life in order: entered first, left last, and the zone between.
    lives: dict[int, list[str]] = {}
    for event in seen:
        assert event["data"]["camera"] == CAMERA and event["severity"] == "info"
        lives.setdefault(event["data"]["track_id"], []).append(event["kind"])
    ended = [kinds for kinds in lives.values() if "object_left" in kinds]
    assert len(ended) >= 3
    for kinds in ended:
        if kinds[0] == "object_entered":  # tracks born before the probe's first message are cut
            assert kinds == ["object_entered", "zone_entered", "zone_left", "object_left"], kinds
    left = next(e for e in seen if e["kind"] == "object_left")
    assert left["data"]["dwell_s"] >= 0 and left["data"]["label"] == "text"


def test_the_retained_zone_counts_follow_the_slideshow(tmp_path, demo_dir, mosquitto, mqtt_probe):
    probe = mqtt_probe(mosquitto.port, [COUNTS])
    agent = AgentProcess(camera_config(tmp_path, demo_dir, mosquitto.url, ZONE))

    def text_counts() -> list[tuple[int, int]]:
        return [(body(m)["frame_id"], body(m)["zones"]["frame"].get("text", 0)) for m in probe.snapshot(COUNTS)]

    def page_then_astronaut() -> tuple[int, int] | None:
        counts = text_counts()
        page = next((f for f, n in counts if n >= 5), None)  # the page's six lines, all in the zone
        gone = next((f for f, n in counts if page is not None and f > page and n == 0), None)
        return None if page is None or gone is None else (page, gone)

    try:
        poll(lambda: page_then_astronaut() is not None, WAIT_S,
             "the zone's text count to rise with the page and fall to 0 with the next photo")
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    counts = text_counts()
    assert all(a[1] != b[1] for a, b in itertools.pairwise(counts)), "published only when they change"
    found = page_then_astronaut()
    assert found is not None
    page, gone = found
    assert page % VIDEO_FRAMES in range(40, 90), "the count rose as the page came"
    assert gone % VIDEO_FRAMES in range(88, 135), "and fell to 0 as the astronaut came"
    # Retained: a subscriber that comes later gets the latest counts at once.
    late = MqttProbe(mosquitto.port, [COUNTS])
    try:
        retained = body(late.wait_for(lambda m: m.topic == COUNTS and m.retain, what="the retained counts"))
    finally:
        late.close()
    assert retained["camera"] == CAMERA and set(retained["zones"]) == {"frame"}
