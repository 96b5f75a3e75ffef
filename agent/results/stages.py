"""The second stages of the running agent: one engine slot per recognizer a camera names.

A camera's ``results.second_stage`` names a model of the store (``text-rec``). At start the
daemon loads each named model's current version into a slot of its own (``SecondStages.load``);
the results publisher then reads, on the frame thread, the boxes of each frame whose results
go out (``read``), under a lease of that slot, so a swap of the second stage's engine
(``swap``, or the deployment manager's swap of the slot) falls between two frames, as the
first stage's does. A model that is not installed or does not load is logged
(``second_stage_unavailable``) and its cameras' results go out without text; a frame whose
reading fails is counted and logged sparsely (``second_stage_failed``), never raised into
inference.

``target(name)`` is what the deployment manager deploys a second stage into
(agent.models.target): its slot, a new version's fit check (a recognizer whose dictionary fits
its output), warm-up inputs made of the last crops it read (``feeds_for``) and its counters
per version for probation (frames read, failed, with non-finite outputs; latency per crop), and
what each version read per camera (``reads_of``: boxes, boxes read empty, summed confidence)
for behavioural probation (agent.models.probation_watch ``ReadProbe``).

In a shadow run of a recognizer (agent.vision.shadow) ``read_pair`` cuts the crops of a frame
once and reads them with the serving version and with the candidate, on the loader thread; the
reads are counted nowhere (probation and health see the results' reads only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog

from agent.core import AgentError
from agent.models import DeployTarget, EngineOptions, ModelStore, ReadTally, Swapped, load_serving
from agent.monitor import FailureCount
from agent.results.recognize import NonFiniteReading, Reading, SecondStage
from agent.runtime import EngineSlot, Serving
from agent.vision import Detection, PipelineCounters
from agent.wire import ModelRef

__all__ = ["WARM_CROPS", "ReadPair", "SecondStages", "StageReading", "second_stage_options"]

log = structlog.get_logger(__name__)

WARM_CROPS = 4
"""Crops of the last read kept per model, to warm a new version up on real text: a batch this size
is what the deploy's warm-up times against ``[deploy] latency_budget_ms`` (a few crops, as a frame
of a page or a sign has)."""
BLANK_CROP = 255
"""Before any read, the warm-up reads one white crop of the model's input size."""


def second_stage_options(first: EngineOptions) -> EngineOptions:
    """The first stage's engine options for a recognizer: ONNX Runtime on the same providers and
    threads, without fused preprocessing, so the crops of a frame go as one float batch padded to
    the widest (what rapidocr reads; a TensorRT build would need the crops' shapes as a profile)."""
    return replace(first, runtime="onnxruntime", fuse_preprocessing=False, tensorrt_shapes=())


@dataclass(frozen=True)
class StageReading:
    """What the second stage read on one frame: its model and a reading per box, in order."""

    model: ModelRef
    readings: tuple[Reading, ...]


@dataclass(frozen=True)
class ReadPair:
    """The same crops read by a second stage's serving version and by a shadow candidate, box by box."""

    serving: tuple[Reading, ...]
    candidate: tuple[Reading, ...]
    """What the candidate read; a frame it failed on (NaN, an error) reads as nothing in every box."""
    serving_ms: float
    candidate_ms: float
    """Milliseconds per crop of each."""


class SecondStages:
    """The recognizers the cameras name, each in its own slot; ``read`` is called on the frame thread."""

    def __init__(self) -> None:
        self.slots: dict[str, EngineSlot] = {}
        self._stages: dict[str, tuple[Serving, SecondStage]] = {}
        """Per model name, the stage built on its serving engine (the dictionary read once per version)."""
        self._counters: dict[str, PipelineCounters] = {}
        """Per model name, its versions' frames, errors, non-finite outputs and ms per crop."""
        self._warm_crops: dict[str, list[np.ndarray]] = {}
        self._reads: dict[str, dict[str, dict[str, ReadTally]]] = {}
        """Per model name, per version, per camera: what the results' reads read."""
        self._candidate: tuple[Serving, SecondStage] | None = None
        """The stage built on the shadow run's candidate (``read_pair``, on the loader thread)."""
        self.failures = FailureCount("second_stage_failed")
        self.candidate_failures = FailureCount("shadow_read_failed")
        """Frames a shadow run's candidate failed to read (``read_pair``): not the serving stage's health."""
        self.frames = 0
        self.crops = 0

    def slot(self, name: str) -> EngineSlot:
        """Model ``name``'s slot (empty until a version is swapped in)."""
        return self.slots.setdefault(name, EngineSlot())

    def target(self, name: str, options: EngineOptions, swapped: Swapped) -> DeployTarget:
        """What the deployment manager deploys model ``name`` into: its slot, checks, warm-up and counters."""
        return DeployTarget(name=name, role="second stage", slot=self.slot(name), options=options,
                            feeds_for=self.feeds_for, stats=self.stats_of(name), swapped=swapped, fits=self.check,
                            reads=self.reads_of(name))

    @staticmethod
    def check(serving: Serving) -> None:
        """Raise TransformError unless ``serving`` is a recognizer this stage can read with (task
        recognize, a ctc head, a dictionary that fits its output's classes)."""
        SecondStage(serving.engine, serving.manifest, serving.folder)

    def feeds_for(self, serving: Serving) -> dict[str, np.ndarray]:
        """Inputs for ``serving`` made of the last crops its name read (a white crop before any)."""
        stage = SecondStage(serving.engine, serving.manifest, serving.folder)
        crops = self._warm_crops.get(serving.name)
        if not crops:
            spec = serving.manifest.preprocess
            crops = [np.full((spec.height, spec.width, 3), BLANK_CROP, dtype=np.uint8)]
        return stage.feeds(crops)

    def stats_of(self, name: str) -> Callable[[str], dict[str, Any]]:
        """Model ``name``'s counters of one version: frames, errors, non-finite outputs, p95 ms per crop."""
        return self._counters.setdefault(name, PipelineCounters()).stats

    def reads_of(self, name: str) -> Callable[[str], dict[str, ReadTally]]:
        """Model ``name``'s reads of one version, per camera (a copy: it goes on counting)."""
        def reads(version: str) -> dict[str, ReadTally]:
            return dict(self._reads.get(name, {}).get(version, {}))
        return reads

    def load(self, store: ModelStore, names: Iterable[str], options: EngineOptions) -> None:
        """Load the current version of each named model not serving yet, its previous one when the
        current does not load or is no recognizer (a deployed version that fails after a restart);
        one with neither is logged and skipped."""
        for name in sorted(set(names)):
            if self.serving(name) is not None:
                continue
            for which in ("current", "previous"):
                if self._load(store, name, which, options):
                    break

    def _load(self, store: ModelStore, name: str, which: str, options: EngineOptions) -> bool:
        try:
            serving = load_serving(store.current(name) if which == "current" else store.previous(name), options)
        except (AgentError, OSError) as exc:  # not installed, quarantined, unloadable
            log.warning("second_stage_unavailable", model=name, which=which, error=str(exc))
            return False
        try:
            self.swap(serving)
        except AgentError as exc:  # a model that is no recognizer
            serving.engine.close()
            log.warning("second_stage_unavailable", model=name, which=which, error=str(exc))
            return False
        return True

    def swap(self, serving: Serving) -> Serving | None:
        """Serve ``serving`` as its name's second stage from the next frame on; the old one is returned
        (closed once its last lease ends, as the slot does). A model that is no recognizer is refused."""
        SecondStage(serving.engine, serving.manifest, serving.folder)  # raises TransformError if it is none
        old = self.slot(serving.name).swap(serving)
        log.info("second_stage_serving", model=serving.name, version=serving.version,
                 previous=None if old is None else old.version)
        return old

    def serving(self, name: str) -> ModelRef | None:
        slot = self.slots.get(name)
        current = None if slot is None else slot.serving
        return None if current is None else ModelRef(name=current.name, version=current.version)

    def read(self, name: str, camera: str, image: np.ndarray,
             detections: Sequence[Detection], counted: bool = True) -> StageReading | None:
        """The boxes of ``image`` read by model ``name``; None when it is not serving or the reading failed.
        ``counted`` False: a read beside the results (a shadow run's), not in ``frames`` and ``crops``."""
        slot = self.slots.get(name)
        if slot is None or slot.serving is None or not detections:
            return None
        try:
            with slot.lease() as serving:
                readings = self._read(serving, camera, image, detections, counted)
        except Exception as exc:  # a second stage must never stop inference (the slot emptied meanwhile)
            self.failures.failed(camera, exc)
            return None
        if readings is None:
            return None
        if counted:
            self.frames += 1
            self.crops += len(readings)
        return StageReading(ModelRef(name=serving.name, version=serving.version), readings)

    def read_pair(self, candidate: Serving, camera: str, image: np.ndarray,
                  detections: Sequence[Detection]) -> ReadPair | None:
        """``detections`` of ``image`` read by the serving version of ``candidate.name`` and by
        ``candidate`` on the same crops (a shadow run's); None when nothing serves that name. A
        failure of the serving version raises; one of the candidate's is what it read: nothing."""
        slot = self.slots.get(candidate.name)
        if slot is None or slot.serving is None or not detections:
            return None
        with slot.lease() as serving:
            quads, crops = SecondStage.crops(image, detections)
            start = time.perf_counter()
            served = self._stage(serving).read(quads, crops)
            serving_ms = (time.perf_counter() - start) * 1000.0 / len(crops)
        start = time.perf_counter()
        try:
            read = self._candidate_stage(candidate).read(quads, crops)
        except Exception as exc:  # the candidate read nothing here: its texts disagree, the run goes on
            self.candidate_failures.failed(f"{candidate.name} {candidate.version}", exc)
            read = tuple(Reading("", 0.0, quad) for quad in quads)
        candidate_ms = (time.perf_counter() - start) * 1000.0 / len(crops)
        return ReadPair(served, read, serving_ms, candidate_ms)

    def _candidate_stage(self, candidate: Serving) -> SecondStage:
        cached = self._candidate
        if cached is None or cached[0] is not candidate:
            cached = self._candidate = (candidate, SecondStage(candidate.engine, candidate.manifest, candidate.folder))
        return cached[1]

    def _read(self, serving: Serving, camera: str, image: np.ndarray,
              detections: Sequence[Detection], counted: bool = True) -> tuple[Reading, ...] | None:
        """The readings, counted for ``serving``'s version (None: failed, counted and logged). A read
        not ``counted`` (a shadow run's) goes to a scratch counter, so probation sees only the results'."""
        counters = self._counters.setdefault(serving.name, PipelineCounters()) if counted else PipelineCounters()
        version = serving.version
        counters.count(version, "frames")
        try:
            stage = self._stage(serving)
            quads, crops = stage.crops(image, detections)
            start = time.perf_counter()
            readings = stage.read(quads, crops)
        except NonFiniteReading as exc:
            counters.count(version, "nonfinite")
            self.failures.failed(camera, exc)
            return None
        except Exception as exc:  # a second stage must never stop inference
            counters.count(version, "errors")
            self.failures.failed(camera, exc)
            return None
        counters.record_infer(version, (time.perf_counter() - start) * 1000.0 / len(crops))
        self._warm_crops[serving.name] = crops[:WARM_CROPS]
        if counted:
            cameras = self._reads.setdefault(serving.name, {}).setdefault(version, {})
            cameras[camera] = cameras.get(camera, ReadTally()).add(readings)
        return readings

    def _stage(self, serving: Serving) -> SecondStage:
        cached = self._stages.get(serving.name)
        if cached is not None and cached[0] is serving:
            return cached[1]
        stage = SecondStage(serving.engine, serving.manifest, serving.folder)
        self._stages[serving.name] = (serving, stage)
        return stage

    def close(self) -> None:
        self._candidate = None
        for slot in self.slots.values():
            slot.clear()

    def health(self) -> dict[str, int]:
        return {"frames": self.frames, "crops": self.crops, "failures": self.failures.count}
