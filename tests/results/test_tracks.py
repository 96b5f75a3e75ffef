"""Tracks (norfair) and the zone, line and object events drawn from them: hand-made track
sequences whose events are known exactly, then the real PP-OCRv4 text detector over the demo
video, whose slideshow moves from the page photo (printed lines) to the astronaut (none)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.results import (
    LineSettings,
    ResultEvent,
    ResultsSettings,
    Scene,
    TrackedObject,
    Tracker,
    TrackerSettings,
    ZoneSettings,
    inside,
)
from agent.vision.transforms import Detection
from tests.results.test_recognize import Detector, needs_rec, video_frames

FPS = 15.0
PAGE_TO_ASTRONAUT = range(70, 120, 2)
"""Demo video frames: page.png up to frame 89, the astronaut (no text) from frame 90."""
FIRST_ASTRONAUT_FRAME = 90


def box(x: float, y: float, w: float = 40.0, h: float = 20.0) -> tuple[float, float, float, float]:
    return (x, y, x + w, y + h)


def obj(track_id: int, x: float, y: float, label: str = "car", matched: bool = True) -> TrackedObject:
    return TrackedObject(track_id, label, box(x, y), 0.9, matched)


def kinds(events: tuple[ResultEvent, ...]) -> list[tuple[str, ...]]:
    out = []
    for e in events:
        extra = tuple(v for v in (e.zone, e.line, e.direction) if v)
        out.append((e.kind, *extra))
    return out


# ---------------------------------------------------------------- the tracker


def test_a_moving_box_keeps_its_track_id_and_a_second_object_gets_another() -> None:
    tracker = Tracker(TrackerSettings(confirm_frames=0))
    ids = []
    for i in range(8):
        found = [Detection(box(10 + 6 * i, 10), 0.9, "car"), Detection(box(300, 200 - 4 * i), 0.8, "person")]
        frame = tracker.update(found)
        assert all(o.matched for o in frame)
        ids.append({o.label: o.track_id for o in frame})
    assert all(i == ids[0] for i in ids), ids
    assert ids[0]["car"] != ids[0]["person"]


def test_a_new_track_gets_its_id_once_confirmed() -> None:
    tracker = Tracker(TrackerSettings(confirm_frames=2))
    seen = [tracker.update([Detection(box(10 + i, 10), 0.9, "car")]) for i in range(4)]
    assert [len(s) for s in seen] == [0, 0, 1, 1]


def test_a_detection_of_another_label_never_continues_a_track() -> None:
    tracker = Tracker(TrackerSettings(confirm_frames=0))
    [car] = tracker.update([Detection(box(10, 10), 0.9, "car")])
    frame = tracker.update([Detection(box(10, 10), 0.9, "person")])
    person = next(o for o in frame if o.label == "person")
    assert person.track_id != car.track_id


def test_a_missed_track_lives_on_its_last_box_through_max_missed_frames_then_is_lost() -> None:
    settings = TrackerSettings(confirm_frames=0, max_missed_frames=5)
    tracker = Tracker(settings)
    for i in range(10):
        tracker.update([Detection(box(10 + i, 10), 0.9, "car")])
    frames = [tracker.update([]) for _ in range(settings.max_missed_frames + 1)]
    assert all(f and not f[0].matched and f[0].box == box(19, 10) for f in frames[:-1]), frames
    assert frames[-1] == ()


def test_a_track_seen_briefly_is_lost_as_soon_as_it_was_seen_long() -> None:
    tracker = Tracker(TrackerSettings(confirm_frames=0, max_missed_frames=5))
    for i in range(2):
        tracker.update([Detection(box(10 + i, 10), 0.9, "car")])
    assert [len(tracker.update([])) for _ in range(3)] == [1, 1, 0]


def test_tracker_settings_refuse_a_confirmation_longer_than_a_track_lives() -> None:
    with pytest.raises(ValidationError, match="confirm_frames must be below max_missed_frames"):
        TrackerSettings(confirm_frames=5, max_missed_frames=5)


# ---------------------------------------------------------------- zones, lines, events (hand-made tracks)

LEFT_HALF = ZoneSettings(name="left", polygon=((0, 0), (320, 0), (320, 480), (0, 480)))
GATE = LineSettings(name="gate", start=(400, 0), end=(400, 480))
"""Vertical, pointing down the screen: its right (on screen) is x < 400, so moving left is ``in``."""


def test_an_object_walking_right_enters_and_leaves_a_zone_crosses_a_line_and_leaves_with_its_dwell() -> None:
    scene = Scene(ResultsSettings(zones=(LEFT_HALF,), lines=(GATE,)))
    xs = [100, 200, 300, 350, 420, 500]
    events = [scene.update(i, i / FPS, [obj(7, x, 100)]) for i, x in enumerate(xs)]
    events.append(scene.update(len(xs), len(xs) / FPS, []))
    assert [kinds(e) for e in events] == [
        [("object_entered",), ("zone_entered", "left")],
        [],
        [("zone_left", "left")],  # anchor 320 is on the edge: even-odd puts it outside
        [],
        [("line_crossed", "gate", "out")],
        [],
        [("object_left",)],
    ]
    assert events[2][0].dwell_s == pytest.approx(2 / FPS)
    assert events[-1][0].dwell_s == pytest.approx(5 / FPS)
    assert events[-1][0].track_id == 7


def test_counts_follow_who_is_in_each_zone_by_label() -> None:
    right = ZoneSettings(name="right", polygon=((320, 0), (640, 0), (640, 480), (320, 480)), labels=("person",))
    scene = Scene(ResultsSettings(zones=(LEFT_HALF, right)))
    scene.update(0, 0.0, [obj(1, 10, 10), obj(2, 50, 10), obj(3, 400, 10, "person"), obj(4, 500, 10)])
    assert scene.counts() == {"left": {"car": 2}, "right": {"person": 1}}
    scene.update(1, 0.1, [obj(1, 10, 10), obj(3, 100, 10, "person")])
    assert scene.counts() == {"left": {"car": 1, "person": 1}, "right": {}}
    assert scene.track_ids() == {1, 3}


def test_an_object_lost_inside_a_zone_leaves_the_zone_then_the_scene_in_that_order() -> None:
    scene = Scene(ResultsSettings(zones=(LEFT_HALF,)))
    scene.update(0, 10.0, [obj(1, 10, 10)])
    scene.update(1, 11.0, [obj(1, 10, 10, matched=False)])
    events = scene.update(2, 12.0, [])
    assert kinds(events) == [("zone_left", "left"), ("object_left",)]
    assert events[0].dwell_s == pytest.approx(2.0)
    assert events[1].dwell_s == pytest.approx(0.0), "last seen when first seen: the unmatched frame is no sighting"


def test_a_line_is_crossed_only_within_its_ends_and_once_per_pass_even_through_a_frame_on_it() -> None:
    short = LineSettings(name="short", start=(400, 100), end=(400, 200))
    below = Scene(ResultsSettings(lines=(short,)))
    passing = [e for i, x in enumerate((300, 500)) for e in below.update(i, float(i), [obj(1, x, 300)])]
    assert kinds(tuple(passing)) == [("object_entered",)], "passing x=400 below the line's end is no crossing"
    scene = Scene(ResultsSettings(lines=(short,)))
    path = (500, 380, 300, 380, 500)  # anchor x: 520, 400 (on the line), 320, 400, 520
    events = [scene.update(10 + i, float(i), [obj(2, x, 140)]) for i, x in enumerate(path)]
    assert [kinds(e) for e in events] == [
        [("object_entered",)], [], [("line_crossed", "short", "in")], [], [("line_crossed", "short", "out")],
    ]


def test_zone_and_line_settings_refuse_bad_names_points_and_duplicates() -> None:
    with pytest.raises(ValidationError, match="must be 1-63"):
        ZoneSettings(name="Left Zone", polygon=((0, 0), (1, 0), (1, 1)))
    with pytest.raises(ValidationError, match="at least 3"):
        ZoneSettings(name="z", polygon=((0, 0), (1, 0)))
    with pytest.raises(ValidationError, match=r"within 0\.\.16384"):
        ZoneSettings(name="z", polygon=((0, 0), (1, 0), (1, -1)))
    with pytest.raises(ValidationError, match="two different points"):
        LineSettings(name="l", start=(1, 1), end=(1, 1))
    with pytest.raises(ValidationError, match="unique"):
        ResultsSettings(zones=(LEFT_HALF,), lines=(GATE.model_copy(update={"name": "left"}),))
    with pytest.raises(ValidationError, match="Extra inputs"):
        ResultsSettings.model_validate({"zones": [], "zone": []})


def test_inside_uses_the_even_odd_rule_on_a_concave_polygon() -> None:
    u_shape = ((0, 0), (30, 0), (30, 30), (20, 30), (20, 10), (10, 10), (10, 30), (0, 30))
    assert inside((5, 20), u_shape) and inside((25, 20), u_shape)
    assert not inside((15, 20), u_shape) and not inside((40, 5), u_shape)


# ---------------------------------------------------------------- the real detector over the demo video


@needs_rec
def test_zone_counts_change_when_the_slideshow_moves_from_the_page_to_the_astronaut() -> None:
    detector = Detector()
    settings = ResultsSettings(
        tracker=TrackerSettings(max_missed_frames=4),
        zones=(ZoneSettings(name="frame", polygon=((0, 0), (640, 0), (640, 480), (0, 480))),),
    )
    tracker, scene = Tracker(settings.tracker), Scene(settings)
    counts: dict[int, int] = {}
    events = []
    for index, frame in video_frames(PAGE_TO_ASTRONAUT):
        objects = tracker.update(detector(frame).items)
        events += scene.update(index, index / FPS, objects)
        counts[index] = scene.counts()["frame"].get("text", 0)
    on_page = [n for i, n in counts.items() if i < FIRST_ASTRONAUT_FRAME and i > PAGE_TO_ASTRONAUT.start + 2]
    settled = [n for i, n in counts.items() if i >= FIRST_ASTRONAUT_FRAME + 2 * settings.tracker.max_missed_frames]
    assert min(on_page) >= 4, counts
    assert settled and max(settled) == 0, counts
    left = [e for e in events if e.kind == "object_left"]
    entered_ids = {e.track_id for e in events if e.kind == "object_entered"}
    assert len(left) >= 4 and {e.track_id for e in left} <= entered_ids
    page_lines = [e for e in left if e.dwell_s is not None and e.dwell_s >= 0.5]
    assert len(page_lines) >= 4, "the page's lines were tracked, each under one id, for most of the scene"
    assert sum(e.kind == "zone_left" for e in events) == len(left)


def test_the_settings_read_from_toml_as_docs_results_shows_them() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on; the agent reads 3.10's TOML with tomli
    document = tomllib.loads("""
[tracker]
min_iou = 0.3
anchor = "bottom_center"
[[zones]]
name = "door"
polygon = [[0, 0], [320, 0], [320, 480], [0, 480]]
labels = ["person"]
[[lines]]
name = "gate"
start = [400, 0]
end = [400, 480]
[rate]
mode = "on_change"
[snapshots]
enabled = true
events = ["object_left", "line_crossed"]
""")
    settings = ResultsSettings.model_validate(document)
    assert settings.zones[0].polygon[1] == (320.0, 0.0) and settings.lines[0].end == (400.0, 480.0)
    assert settings.tracker.anchor == "bottom_center" and settings.snapshots.events == ("object_left", "line_crossed")
    with pytest.raises(ValidationError, match=r"snapshots\.events\.0"):
        ResultsSettings.model_validate({"snapshots": {"events": ["object_seen"]}})
