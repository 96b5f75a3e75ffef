"""The warm-up on a crop (``[deploy] warmup_scale``): real models, a real frame of the demo video, the
real deployment manager. The crop is the centre of the live frame's input, each side a multiple of the
preprocessing's ``multiple``; a model of fixed input size is warmed on its whole input; the latency
budget is checked on the crop's time scaled to the full frame."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import cv2
import numpy as np
import pytest

from agent.models.candidate import warm_up, warmup_crop
from agent.models.loader import EngineOptions, load_serving
from agent.models.store import ModelStore
from agent.runtime import Serving
from agent.runtime.base import ShapeProfile
from agent.vision.pipeline import _Prepared
from agent.wire import DeploymentStep
from tests.support.artifacts import bundle_of, sha256
from tests.support.deploy_rig import Rig, deploy_request, refused


@pytest.fixture(scope="module")
def frame(demo_dir) -> np.ndarray:
    capture = cv2.VideoCapture(str(demo_dir / "video.mp4"))
    try:
        ok, image = capture.read()
    finally:
        capture.release()
    assert ok and image is not None
    return image


def serving(tmp_path, demo_dir, model: str, fused: bool) -> Serving:
    installed = ModelStore(tmp_path / "engines").install(demo_dir / "models" / model)
    return load_serving(installed, EngineOptions(threads=1, fuse_preprocessing=fused))


def feeds_of(new: Serving, image: np.ndarray) -> dict[str, np.ndarray]:
    prepared = _Prepared(new)
    tensor, _ = prepared.preprocessor.prep(image)
    return {prepared.input_name: tensor}


@pytest.mark.parametrize("fused", [True, False], ids=["fused-uint8-frame", "unfused-nchw-tensor"])
def test_a_model_of_any_frame_size_is_warmed_on_the_centre_of_the_frame(tmp_path, demo_dir, frame, fused):
    new = serving(tmp_path, demo_dir, "text-det-v6", fused)
    try:
        feeds = feeds_of(new, frame)
        (name, full), = feeds.items()
        cropped, share = warmup_crop(feeds, new, 0.5)
        crop = cropped[name]
        axes = (1, 2) if fused else (2, 3)
        sides = [full.shape[a] for a in axes]
        kept = [crop.shape[a] for a in axes]
        multiple = new.manifest.preprocess.multiple
        assert sides == [480, 640]
        assert kept == [side // 2 // multiple * multiple for side in sides] == [224, 320]
        assert share == pytest.approx(kept[0] * kept[1] / (sides[0] * sides[1]))
        top, left = (sides[0] - kept[0]) // 2, (sides[1] - kept[1]) // 2
        window = full[:, top:top + kept[0], left:left + kept[1]] if fused else \
            full[:, :, top:top + kept[0], left:left + kept[1]]
        assert np.array_equal(crop, window), "the crop is the centre of the live frame's input"
        assert crop.flags["C_CONTIGUOUS"]
        timings = warm_up(new, cropped, 1, None)
        assert len(timings) == 1 and timings[0] > 0
        assert warmup_crop(feeds, new, 1.0) == (feeds, 1.0)
    finally:
        new.engine.close()


def test_a_model_of_fixed_input_size_is_warmed_on_its_whole_input(tmp_path, demo_dir, frame):
    new = serving(tmp_path, demo_dir, "orientation-0.0.11", fused=True)
    try:
        assert new.manifest.preprocess.resize != "multiple"
        feeds = feeds_of(new, frame)
        cropped, share = warmup_crop(feeds, new, 0.5)
        assert share == 1.0 and cropped is feeds
    finally:
        new.engine.close()


def test_a_deploy_warmed_on_a_crop_serves_every_frame_and_reports_the_share(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)

    async def scenario():
        rig = Rig(tmp_path, demo_dir, warmup_scale=0.5, warmup_runs=1)
        await rig.start()
        request = deploy_request(server.url(bundle.name), sha256(bundle), format="bundle", version="v6")
        try:
            return rig, await rig.manager.deploy(request)
        finally:
            await rig.frames_past(len(rig.frames) + 5)
            rig.stop()

    rig, new = asyncio.run(scenario())
    assert new.version == "v6"
    rig.assert_no_frame_skipped()
    validating = [r for r in rig.reports if r.step == DeploymentStep.VALIDATING and r.detail]
    assert validating and validating[0].detail["warm_share"] == pytest.approx(224 * 320 / (480 * 640), abs=1e-3)
    assert validating[0].detail["warm_ms"] > 0


def test_the_latency_budget_on_a_crop_names_the_crop_and_the_full_frame_estimate(tmp_path, demo_dir, server):
    bundle = bundle_of(demo_dir, "text-det-v6", server.root)
    failure, _ = refused(tmp_path, demo_dir, deploy_request(server.url(bundle.name), sha256(bundle), format="bundle",
                                                   version="v6"), latency_budget_ms=0.01, warmup_scale=0.5)
    assert (failure.step, failure.code) == (DeploymentStep.VALIDATING, "over_latency_budget")
    assert "from a 23% crop" in failure.message and "the budget is 0.0 ms" in failure.message


class _Profiled:
    """The real ONNX Runtime engine with a TensorRT optimization profile beside it (the profile is all
    warmup_crop reads of a TensorRT engine; the real build is tests/models/test_loader_tensorrt.py)."""

    def __init__(self, engine, profile: ShapeProfile) -> None:
        self.engine = engine
        self.inputs = engine.inputs
        self.profiles = {engine.inputs[0].name: profile}


@pytest.mark.parametrize(("least", "kept"), [((1, 480, 640, 3), (480, 640)), ((1, 256, 384, 3), (256, 384)),
                                             ((1, 32, 32, 3), (224, 320))],
                         ids=["fixed-profile", "profile-above-the-crop", "profile-below-the-crop"])
def test_the_crop_stays_inside_a_tensorrt_optimization_profile(tmp_path, demo_dir, frame, least, kept):
    new = serving(tmp_path, demo_dir, "text-det-v6", fused=True)
    try:
        feeds = feeds_of(new, frame)
        profile = ShapeProfile(min=least, opt=(1, 480, 640, 3), max=(1, 480, 640, 3))
        cropped, share = warmup_crop(feeds, replace(new, engine=_Profiled(new.engine, profile)), 0.5)
        (tensor,) = cropped.values()
        assert tensor.shape[1:3] == kept
        assert share == pytest.approx(kept[0] * kept[1] / (480 * 640))
    finally:
        new.engine.close()


def test_a_manifest_that_fixes_the_size_is_warmed_at_that_size(tmp_path, demo_dir, frame):
    new = serving(tmp_path, demo_dir, "text-det-v6", fused=True)
    try:
        feeds = feeds_of(new, frame)
        preprocess = new.manifest.preprocess.model_copy(update={"height": 480, "width": 640})
        fixed = replace(new, manifest=new.manifest.model_copy(update={"preprocess": preprocess}))
        cropped, share = warmup_crop(feeds, fixed, 0.5)
        assert share == 1.0 and cropped is feeds, "serving feeds 480x640 only: a crop would warm another shape"
    finally:
        new.engine.close()
