"""Deploying the second stage by name, in process: the real deployment manager, the running agent's
second stages (agent.results.stages) and real recognizers (PP-OCRv4 rec, PP-OCRv6 rec_small, and
broken v4s), read on the page photo's real text boxes as the results publisher reads them.

A deploy of ``text-rec`` lands in the recognizer's slot, not the detector's: fetched, verified,
installed, loaded, warmed on the crops it last read, validated (a recognizer whose dictionary
fits, no NaN, its goldens) and swapped between two reads; probation watches its reads and swaps
back by itself; ``rollback`` by name returns the previous one. Bad input changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.core.config import CameraSection, DeploySection
from agent.device.stages import StageBook
from agent.models.bundle import pack_bundle
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeployFailed, DeploymentManager, DeployRequest
from agent.models.manifest import Manifest
from agent.models.probation import Probation
from agent.models.shadow import ShadowDecision, ShadowSpec
from agent.models.store import ModelStore
from agent.results.stages import SecondStages, second_stage_options
from agent.runtime import EngineSlot, Serving
from agent.vision import CameraSet
from agent.vision.shadow import ShadowRunner
from agent.vision.transforms import Detection, Prediction
from agent.wire import DeploymentState, DeploymentStep
from tests.results.test_recognize import DEMO, MODELS, Detector, needs_rec
from tests.support.artifacts import sha256
from tests.support.monitor_support import result_of
from tests.support.rec_bundles import (
    blank_rec_bundle,
    golden_rec_bundle,
    nan_rec_bundle,
    rec_bundle,
    rec_folder,
    shuffled_rec_bundle,
    slow_rec_bundle,
)

pytestmark = needs_rec
OPTIONS = second_stage_options(EngineOptions(threads=2))
PAGE_WORDS = ("segmentation", "markers", "coins")
WATCHED = Probation(window_s=3600.0, max_error_rate=1.0, max_nonfinite=0, max_latency_ratio=100.0)
"""A probation that does not end within a test: the swap itself is what is checked."""
TEXT_BOUND = 0.8
"""[deploy] shadow_min_text_agreement's default."""
SHADOW_FRAMES = 3
WAIT_S = 180.0
"""Bound on waiting for a shadow run to read its frames on a loaded machine."""
FRAME_GAP_S = 0.02
"""Between two frames the feeder hands the shadow observer: a camera's pace, not a bound."""
READ_GAP_S = 0.2
"""Between two reads of the page while a deploy runs: a 5 fps camera's pace, not a bound (back to back,
the reads took the CPU from the load and the probation they wait on)."""


@pytest.fixture(scope="module")
def page() -> tuple[Any, tuple[Detection, ...]]:
    frame = cv2.imread(str(DEMO / "images" / "page.png"))
    boxes = tuple(d for d in Detector()(frame).items if isinstance(d, Detection))
    assert len(boxes) >= 5
    return frame, boxes


@pytest.fixture(scope="module")
def page_prediction(page) -> Prediction:
    return Detector()(page[0])


class StageRig:
    """text-det v4 in the first stage's slot, text-rec v4 in its own, and the manager over both, as the
    daemon wires them (``named``: the second stages the cameras name)."""

    def __init__(self, tmp: Path, named: tuple[str, ...] = ("text-rec",), load: bool = True, **settings: Any):
        self.store = ModelStore(tmp / "engines")
        self.store.install(MODELS / "text-det-v4")
        self.store.install(MODELS / "text-rec-v4")
        self.first = EngineSlot()
        self.first.swap(load_serving(self.store.current("text-det"), EngineOptions(threads=1)))
        self.stages = SecondStages()
        if load:
            self.stages.load(self.store, named, OPTIONS)
        self.named = named
        self.swaps: list[tuple[str, str | None, str, str]] = []
        self.reports: list[Any] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        defaults = {"allowed_schemes": ("file",), "file_roots": (tmp, DEMO.resolve()),
                    "latency_budget_ms": 60_000.0, "load_nice": 0, "warmup_runs": 2}
        self.manager = DeploymentManager(
            store=self.store, slot=self.first, options=EngineOptions(threads=1),
            settings=DeploySection.model_validate({**defaults, **settings}), public_key=None,
            feeds_for=self._first_stage_not_deployed, stats=self._first_stage_not_deployed,
            report=self._report, swapped=self._first_swapped, event=self._event,
            second_stages=lambda: {n: self.stages.target(n, OPTIONS, self._second_swapped) for n in self.named})

    @staticmethod
    def _first_stage_not_deployed(*_: object) -> Any:
        raise AssertionError("these tests deploy the second stage only: the first stage's must not be asked")

    async def _report(self, status: Any) -> None:
        self.reports.append(status)

    async def _event(self, kind: str, _severity: str, _message: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))

    async def _first_swapped(self, new: Serving, old: Serving | None, reason: str) -> None:
        self.swaps.append(("first", old.version if old else None, new.version, reason))

    async def _second_swapped(self, new: Serving, old: Serving | None, reason: str) -> None:
        self.swaps.append((new.name, old.version if old else None, new.version, reason))

    def read(self, page: tuple[Any, tuple[Detection, ...]], boxes: int | None = None) -> tuple[str, str]:
        """The page read by text-rec now: (version, text)."""
        frame, detections = page
        read = self.stages.read("text-rec", "front", frame, detections[:boxes])
        assert read is not None, "the second stage read nothing"
        return read.model.version, " ".join(r.text for r in read.readings)

    def close(self) -> None:
        self.manager.close()
        self.stages.close()
        self.first.clear()


def request(bundle: Path, version: str, name: str = "text-rec", **fields: Any) -> DeployRequest:
    return DeployRequest(**{"name": name, "version": version, "url": bundle.as_uri(), "sha256": sha256(bundle),
                            "format": "bundle", "probation": WATCHED, **fields})


def test_text_rec_deployed_by_name_serves_its_slot_and_rolls_back_by_name(tmp_path, page):
    rig = StageRig(tmp_path)
    bundle = rec_bundle(DEMO, tmp_path / "www", "v6")

    async def scenario() -> tuple[str, str]:
        before = rig.read(page)  # the crops the new version is warmed up on
        assert before[0] == "v4"
        new = await rig.manager.deploy(request(bundle, "v6"))
        assert (new.name, new.version) == ("text-rec", "v6")
        after = rig.read(page)
        served = await rig.manager.rollback("back to v4", name="text-rec")
        assert served.version == "v4"
        detector = rig.first.serving
        assert detector is not None and detector.version == "v4", "the detector's slot is untouched"
        return after, rig.read(page)

    try:
        (version, text), (back, back_text) = asyncio.run(scenario())
    finally:
        rig.close()
    assert version == "v6" and all(word in text for word in PAGE_WORDS), text
    assert back == "v4" and all(word in back_text for word in PAGE_WORDS), back_text
    assert rig.swaps == [("text-rec", "v4", "v6", "deploy"), ("text-rec", "v6", "v4", "back to v4")]
    assert rig.store.current_version("text-rec") == "v4" and rig.store.previous_version("text-rec") == "v6"
    assert rig.store.current_version("text-det") == "v4"
    states = [(r.name, r.state) for r in rig.reports]
    assert ("text-rec", DeploymentState.ACTIVE) in states and states[-1] == ("text-rec", DeploymentState.ROLLED_BACK)
    assert rig.reports[-1].error["code"] == "rolled_back_by_command"


@pytest.mark.parametrize(("broken", "code", "step"), [
    ("nan", "non_finite_output", "warming"),
    ("wrong_golden", "golden_mismatch", "validating"),
    ("detector", "does_not_fit_head", "validating"),
])
def test_a_broken_recognizer_is_refused_and_the_old_keeps_reading(tmp_path, page, broken, code, step):
    www = tmp_path / "www"
    www.mkdir()
    if broken == "nan":
        bundle = nan_rec_bundle(DEMO, www, "v7")
    elif broken == "wrong_golden":
        bundle = golden_rec_bundle(DEMO, www, "v7", wrong=True)
    else:  # the detector, named text-rec: it loads and infers, and is no recognizer
        folder = tmp_path / "det-as-rec"
        shutil.copytree(MODELS / "text-det-v6", folder)
        manifest = Manifest.read(folder / "manifest.json")
        manifest.model_copy(update={"name": "text-rec", "version": "v7", "files": {}}).write(folder / "manifest.json")
        bundle = www / "det-as-rec.tar"
        pack_bundle(folder, bundle)
    rig = StageRig(tmp_path)

    async def scenario() -> DeployFailed:
        rig.read(page)
        with pytest.raises(DeployFailed) as caught:
            await rig.manager.deploy(request(bundle, "v7"))
        return caught.value

    try:
        failure = asyncio.run(scenario())
        version, text = rig.read(page)
    finally:
        rig.close()
    assert (failure.code, failure.step.value) == (code, step), failure.message
    assert version == "v4" and all(word in text for word in PAGE_WORDS)
    assert rig.swaps == []
    assert rig.store.versions("text-rec") == ["v4"] and rig.store.current_version("text-rec") == "v4"
    assert rig.reports[-1].state == DeploymentState.FAILED and rig.reports[-1].error["code"] == code


def test_good_goldens_pass_for_a_recognizer(tmp_path, page):
    rig = StageRig(tmp_path)
    bundle = golden_rec_bundle(DEMO, tmp_path, "v5", wrong=False)
    try:
        served = asyncio.run(rig.manager.deploy(request(bundle, "v5")))
        assert served.version == "v5" and rig.read(page)[0] == "v5"
    finally:
        rig.close()


def test_bad_input_gets_a_coded_error_and_changes_nothing(tmp_path, page):
    rig = StageRig(tmp_path)
    bundle = rec_bundle(DEMO, tmp_path / "www", "v6")

    async def scenario() -> list[DeployFailed]:
        failures = []
        for attempt in (
            rig.manager.deploy(request(bundle, "v6", name="text-foo")),
            rig.manager.deploy(request(bundle, "v6", shadow=ShadowSpec(0.9, 5, 2, True, min_text_agreement=0.0),
                                       shadow_duration_s=5.0)),
            rig.manager.rollback("no such model", name="text-foo"),
            rig.manager.rollback("nothing before v4", name="text-rec"),
        ):
            with pytest.raises(DeployFailed) as caught:
                await attempt
            failures.append(caught.value)
        return failures

    try:
        failures = asyncio.run(scenario())
        version, _ = rig.read(page)
    finally:
        rig.close()
    assert [f.code for f in failures] == ["wrong_model", "invalid_shadow", "wrong_model", "no_previous"]
    assert "text-rec" in failures[0].message and "text-det" in failures[0].message, failures[0].message
    assert "text agreement" in failures[1].message, failures[1].message
    assert rig.reports == [], "refused before anything was published"
    assert rig.swaps == [] and version == "v4"
    assert rig.store.versions("text-rec") == ["v4"]


def test_a_second_stage_no_camera_named_at_start_is_loaded_when_one_names_it(tmp_path, page):
    rig = StageRig(tmp_path, named=(), load=False)

    shadow = request(MODELS / "text-rec-v4" / "model.onnx", "v6", format="onnx", shadow=_spec(),
                     shadow_duration_s=WAIT_S)

    async def scenario() -> tuple[Any, Any, str]:
        with pytest.raises(DeployFailed) as caught:
            await rig.manager.serve_current("text-rec")
        assert caught.value.code == "wrong_model", "no camera names it yet"
        with pytest.raises(DeployFailed) as unnamed:
            await rig.manager.deploy(shadow)
        assert unnamed.value.code == "wrong_model" and "no camera names" in unnamed.value.message
        rig.named = ("text-rec", "text-nope")
        with pytest.raises(DeployFailed) as empty:
            await rig.manager.deploy(shadow)
        assert empty.value.code == "no_model", "nothing serves text-rec to read beside"
        first = await rig.manager.serve_current("text-rec")
        again = await rig.manager.serve_current("text-rec")
        with pytest.raises(DeployFailed) as missing:
            await rig.manager.serve_current("text-nope")
        return first, again, missing.value.code

    try:
        first, again, missing = asyncio.run(scenario())
        version, text = rig.read(page)
    finally:
        rig.close()
    assert first is not None and first.version == "v4" and again is None, "loaded once"
    assert missing == "load_failed"
    assert version == "v4" and all(word in text for word in PAGE_WORDS)
    assert rig.swaps == [("text-rec", None, "v4", "a camera names it")]
    assert rig.reports == [], "the shadow deploys were refused before anything was published"


def _deploy_while_reading(rig: StageRig, page: tuple[Any, tuple[Detection, ...]], req: DeployRequest,
                          boxes: int | None = None) -> tuple[list[str], str]:
    """Deploy ``req`` while a thread reads the page (the results' reads probation watches) until the
    deployment ends: the versions read meanwhile, and the one that reads after."""
    stop = threading.Event()
    seen: list[str] = []

    def reading() -> None:
        while not stop.is_set():
            seen.append(rig.read(page, boxes)[0])
            stop.wait(READ_GAP_S)

    async def scenario() -> str:
        for _ in range(12):  # the baseline: the old version's figures (and READ_MIN_BOXES) before the deploy
            rig.read(page, boxes)
        reader = threading.Thread(target=reading, daemon=True)
        reader.start()
        try:
            await rig.manager.deploy(req)
            await _until(lambda: rig.reports[-1].state in DeploymentState.FINAL, "the deployment ends")
        finally:
            stop.set()
            reader.join()
        return rig.read(page, boxes)[0]

    try:
        return seen, asyncio.run(scenario())
    finally:
        rig.close()


def test_probation_swaps_a_slower_recognizer_back_by_itself(tmp_path, page):
    """The slow v8 reads the same text at many times v4's milliseconds per crop: past the 1.5x bound
    probation rolls it back to v4 (the ratio, not any wall-clock figure, is what is judged)."""
    rig = StageRig(tmp_path, probation_s=5.0, min_probation_frames=2, max_latency_ratio=1.5)
    bundle = slow_rec_bundle(DEMO, tmp_path / "www", "v8")
    seen, after = _deploy_while_reading(rig, page, request(bundle, "v8", probation=None), boxes=1)
    last = rig.reports[-1]
    assert last.state == DeploymentState.ROLLED_BACK and last.error["code"] == "probation_failed", last
    assert "latency" in last.error["message"]
    assert "v8" in seen and after == "v4"
    assert rig.swaps == [("text-rec", "v4", "v8", "deploy"),
                         ("text-rec", "v8", "v4", f"probation: {last.error['message']}")]
    assert rig.store.current_version("text-rec") == "v4"


def test_probation_rolls_back_a_recognizer_that_reads_every_box_empty(tmp_path, page):
    """v10 (v4 times zero) is as fast and as finite as v4, and reads nothing: behavioural probation
    compares its reads on the camera with v4's there and rolls it back."""
    rig = StageRig(tmp_path, probation_s=60.0, min_probation_frames=2, max_latency_ratio=100.0)
    bundle = blank_rec_bundle(DEMO, tmp_path / "www", "v10")
    seen, after = _deploy_while_reading(rig, page, request(bundle, "v10", probation=None))
    last = rig.reports[-1]
    assert last.state == DeploymentState.ROLLED_BACK and last.error["code"] == "probation_failed", last
    assert "read empty" in last.error["message"], last.error
    reads = last.detail["behaviour"]["reads"]["front"]
    assert reads["empty"] == 1.0 and reads["old_empty"] < 0.5 and reads["confidence"] == 0.0, reads
    assert "v10" in seen and after == "v4" and rig.store.current_version("text-rec") == "v4"
    assert [s[:3] for s in rig.swaps] == [("text-rec", "v4", "v10"), ("text-rec", "v10", "v4")]


def test_a_bare_recognizer_takes_the_serving_ones_manifest_and_dictionary(tmp_path, page):
    """A bare v4 ONNX as v5 reads as v4 did, with v4's dictionary; a bare v6 (another alphabet) does not
    fit that dictionary and is refused before it serves."""
    rig = StageRig(tmp_path)
    v6 = rec_folder(DEMO, "v6", tmp_path / "extracted") / "model.onnx"

    async def scenario() -> tuple[str, DeployFailed]:
        await rig.manager.deploy(request(MODELS / "text-rec-v4" / "model.onnx", "v5", format="onnx"))
        version, text = rig.read(page)
        assert all(word in text for word in PAGE_WORDS), text
        with pytest.raises(DeployFailed) as caught:
            await rig.manager.deploy(request(v6, "v6", format="onnx"))
        return version, caught.value

    try:
        version, failure = asyncio.run(scenario())
        after, _ = rig.read(page)
    finally:
        rig.close()
    assert version == "v5" and after == "v5"
    assert failure.code == "does_not_fit_head" and "classes" in failure.message, failure.message
    assert rig.store.versions("text-rec") == ["v4", "v5"]


def _spec(auto_promote: bool = True) -> ShadowSpec:
    return ShadowSpec(min_agreement=0.9, min_frames=SHADOW_FRAMES, every_nth=1, auto_promote=auto_promote,
                      min_text_agreement=TEXT_BOUND)


async def _nothing(*_: object) -> Any:
    return True


class ShadowFeed:
    """The agent's shadow observer over the rig's manager and a StageBook whose camera ``front`` names
    text-rec (``lobby`` none), handed the page with the detector's boxes from a thread, as the frame
    worker hands it each frame, while ``feeding``."""

    def __init__(self, rig: StageRig, page: tuple[Any, tuple[Detection, ...]], prediction: Prediction) -> None:
        video = str(DEMO / "video.mp4")
        cameras = CameraSet([CameraSection(name="front", uri=video, results={"second_stage": "text-rec"}),
                             CameraSection(name="lobby", uri=video)], "text-det")
        book = StageBook(rig.stages, cameras, OPTIONS, _nothing, _nothing, _nothing)
        self.runner = ShadowRunner(rig.manager.shadow, rig.manager.run_beside, None, second=book)
        self.image = page[0]
        self.prediction = prediction
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)

    def _feed(self) -> None:
        index = 0
        while not self._stop.is_set():
            for camera in ("front", "lobby"):
                self.runner(result_of(index, self.image, self.prediction, source=camera))
            index += 1
            time.sleep(FRAME_GAP_S)

    @contextlib.contextmanager
    def feeding(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


def _shadow_rig(tmp_path: Path, page: tuple[Any, tuple[Detection, ...]],
                prediction: Prediction) -> tuple[StageRig, ShadowFeed]:
    rig = StageRig(tmp_path)
    return rig, ShadowFeed(rig, page, prediction)


async def _until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


def _ended_shadow(rig: StageRig) -> tuple[Any, list[tuple[str, str, str]]]:
    """The last deployment state's shadow report, and the shadow events (kind, model, stage)."""
    return rig.reports[-1].shadow, [(kind, d["model"], d["stage"]) for kind, d in rig.events]


def test_text_rec_v6_in_shadow_beside_v4_is_promoted_on_the_text_bound(tmp_path, page, page_prediction):
    rig, feed = _shadow_rig(tmp_path, page, page_prediction)
    bundle = rec_bundle(DEMO, tmp_path / "www", "v6")

    async def scenario() -> tuple[Serving, int]:
        rig.read(page)
        before = rig.stages.health()["frames"]
        with feed.feeding():
            new = await rig.manager.deploy(request(bundle, "v6", shadow=_spec(), shadow_duration_s=WAIT_S))
        return new, rig.stages.health()["frames"] - before

    try:
        (new, counted), (version, text) = asyncio.run(scenario()), rig.read(page)
    finally:
        rig.close()
    assert new.version == version == "v6" and all(word in text for word in PAGE_WORDS), text
    assert rig.swaps == [("text-rec", "v4", "v6", "deploy")]
    assert counted == 0, "a shadow read is not a results read"
    assert feed.runner.failures.count == 0
    last = rig.reports[-1]
    assert (last.name, last.state) == ("text-rec", DeploymentState.ACTIVE)
    assert DeploymentState.SHADOW in [r.state for r in rig.reports]
    report, events = _ended_shadow(rig)
    assert report["frames"] >= SHADOW_FRAMES and report["agreement"] is None, "the same boxes: text alone judges"
    assert report["text"]["character"] >= TEXT_BOUND and report["text"]["pairs"] >= 5 * SHADOW_FRAMES, report
    assert list(report["cameras"]) == ["front"], "lobby names no second stage: nothing read there"
    assert report["cameras"]["front"]["latency_ratio"] is not None
    assert events == [("shadow_promoted", "text-rec", "second")]


def test_a_recognizer_with_a_shuffled_dictionary_is_discarded_in_shadow_while_v4_reads_on(tmp_path, page,
                                                                                          page_prediction):
    rig, feed = _shadow_rig(tmp_path, page, page_prediction)
    bundle = shuffled_rec_bundle(DEMO, tmp_path / "www", "v9")

    async def scenario() -> DeployFailed:
        with feed.feeding(), pytest.raises(DeployFailed) as caught:
            await rig.manager.deploy(request(bundle, "v9", shadow=_spec(), shadow_duration_s=WAIT_S))
        return caught.value

    try:
        failure, (version, text) = asyncio.run(scenario()), rig.read(page)
    finally:
        rig.close()
    assert (failure.step, failure.code) == (DeploymentStep.SHADOW, "shadow_discarded")
    assert "text agreement" in failure.message, failure.message
    assert version == "v4" and all(word in text for word in PAGE_WORDS), text
    assert rig.swaps == [] and rig.store.versions("text-rec") == ["v4"]
    assert rig.reports[-1].state is DeploymentState.DISCARDED
    report, events = _ended_shadow(rig)
    assert report["text"]["character"] < 0.2, report
    assert events == [("shadow_discarded", "text-rec", "second")]


def test_a_promote_while_the_recognizer_is_pending_is_refused_and_one_once_ready_swaps_it(tmp_path, page,
                                                                                          page_prediction):
    rig, feed = _shadow_rig(tmp_path, page, page_prediction)
    bundle = rec_bundle(DEMO, tmp_path / "www", "v6")

    async def scenario() -> tuple[DeployFailed, Serving, Serving]:
        deploy = asyncio.create_task(rig.manager.deploy(request(bundle, "v6", shadow=_spec(auto_promote=False),
                                                                shadow_duration_s=WAIT_S)))
        await _until(lambda: rig.manager.shadow.running or deploy.done(), "the shadow run starts")
        with pytest.raises(DeployFailed) as pending:
            await rig.manager.promote()  # no frame fed yet: nothing compared
        with feed.feeding():
            await _until(lambda: rig.manager.shadow.decide()[0] is ShadowDecision.READY, "the bound is met")
            promoted = await rig.manager.promote()
            return pending.value, promoted, await deploy

    try:
        (pending, promoted, served), (version, _) = asyncio.run(scenario()), rig.read(page)
    finally:
        rig.close()
    assert pending.code == "not_ready" and "pending" in pending.message, pending.message
    assert promoted.version == served.version == version == "v6"
    assert rig.swaps == [("text-rec", "v4", "v6", "deploy")]
    assert rig.reports[-1].state is DeploymentState.ACTIVE
