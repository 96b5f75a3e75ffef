"""The second stages of the running agent: one engine slot per recognizer a camera names.

A camera's ``results.second_stage`` names a model of the store (``text-rec``). At start the
daemon loads each named model's current version into a slot of its own (``SecondStages.load``);
the results publisher then reads, on the frame thread, the boxes of each frame whose results
go out (``read``), under a lease of that slot, so a swap of the second stage's engine
(``swap``) falls between two frames, as the first stage's does. A model that is not installed
or does not load is logged (``second_stage_unavailable``) and its cameras' results go out
without text; a frame whose reading fails is counted and logged sparsely
(``second_stage_failed``), never raised into inference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import structlog

from agent.core import AgentError
from agent.models import EngineOptions, ModelStore, load_serving
from agent.monitor import FailureCount
from agent.results.recognize import Reading, SecondStage
from agent.runtime import EngineSlot, Serving
from agent.vision import Detection
from agent.wire import ModelRef

__all__ = ["SecondStages", "StageReading", "second_stage_options"]

log = structlog.get_logger(__name__)


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


class SecondStages:
    """The recognizers the cameras name, each in its own slot; ``read`` is called on the frame thread."""

    def __init__(self) -> None:
        self.slots: dict[str, EngineSlot] = {}
        self._stages: dict[str, tuple[Serving, SecondStage]] = {}
        """Per model name, the stage built on its serving engine (the dictionary read once per version)."""
        self.failures = FailureCount("second_stage_failed")
        self.frames = 0
        self.crops = 0

    def load(self, store: ModelStore, names: Iterable[str], options: EngineOptions) -> None:
        """Load the current version of each named model; one that cannot be loaded is logged and skipped."""
        for name in sorted(set(names)):
            try:
                serving = load_serving(store.current(name), options)
            except (AgentError, OSError) as exc:  # not installed, quarantined, unloadable
                log.warning("second_stage_unavailable", model=name, error=str(exc))
                continue
            try:
                self.swap(serving)
            except AgentError as exc:  # a model that is no recognizer
                serving.engine.close()
                log.warning("second_stage_unavailable", model=name, error=str(exc))

    def swap(self, serving: Serving) -> Serving | None:
        """Serve ``serving`` as its name's second stage from the next frame on; the old one is returned
        (closed once its last lease ends, as the slot does). A model that is no recognizer is refused."""
        SecondStage(serving.engine, serving.manifest, serving.folder)  # raises TransformError if it is none
        slot = self.slots.setdefault(serving.name, EngineSlot())
        old = slot.swap(serving)
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
                stage = self._stage(serving)
                readings = stage(image, detections)
        except Exception as exc:  # a second stage must never stop inference
            self.failures.failed(camera, exc)
            return None
        if counted:
            self.frames += 1
            self.crops += len(readings)
        return StageReading(ModelRef(name=serving.name, version=serving.version), readings)

    def _stage(self, serving: Serving) -> SecondStage:
        cached = self._stages.get(serving.name)
        if cached is not None and cached[0] is serving:
            return cached[1]
        stage = SecondStage(serving.engine, serving.manifest, serving.folder)
        self._stages[serving.name] = (serving, stage)
        return stage

    def close(self) -> None:
        for slot in self.slots.values():
            slot.clear()

    def health(self) -> dict[str, int]:
        return {"frames": self.frames, "crops": self.crops, "failures": self.failures.count}
