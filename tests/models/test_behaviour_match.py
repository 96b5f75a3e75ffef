"""Matching the new model's frames to the old model's by what the camera showed: the demo video's frames."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from agent.core.config import DeploySection
from agent.models.behaviour import BehaviourBounds
from agent.models.behaviour_match import match_inputs
from agent.monitor import input_stats
from tests.support.monitor_support import SCENE_FRAMES, video

DEFAULTS = BehaviourBounds.from_settings(DeploySection())
SCENES = 6


class Seen(NamedTuple):
    inputs: tuple[float, float, float]


def _scene(scene: int, offset: int, step: int = 3) -> list[Seen]:
    """Every ``step``-th frame of the demo video's photo ``scene``, from ``offset`` into it."""
    frames = video()[scene * SCENE_FRAMES + offset:(scene + 1) * SCENE_FRAMES:step]
    return [Seen(input_stats(image)) for image in frames]


def test_frames_of_one_photo_match_each_other_and_no_other_photos():
    old = [seen for scene in range(SCENES) for seen in _scene(scene, 0)]
    owner = np.repeat(np.arange(SCENES), len(old) // SCENES)
    for scene in range(SCENES):
        new = _scene(scene, 1)
        matched = match_inputs(DEFAULTS, new, old)
        assert len(matched.new) == len(new), scene  # every frame has a look-alike of its own photo
        assert set(owner[matched.weights > 0]) == {scene}, scene
        assert np.isclose(matched.weights.sum(), len(new))


def test_a_new_frame_spreads_its_weight_over_its_look_alikes_and_an_unlike_one_is_left_out():
    page, rocket = _scene(1, 1), _scene(5, 0)
    matched = match_inputs(DEFAULTS, [*page[:1], *rocket[:1]], page)
    assert matched.new == (0,)
    assert np.isclose(matched.weights.sum(), 1.0) and matched.old_frames >= 1
    assert match_inputs(DEFAULTS, rocket, page).new == ()
    assert match_inputs(DEFAULTS, [], page).old_frames == 0
