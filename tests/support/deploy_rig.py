"""The deployment manager wired as the daemon wires it, on the real models and video, for in-process tests.

``Rig`` serves text-det v4 through a real pipeline and records every processed frame, report and
swap; ``refused`` deploys a request that must fail and checks that v4 kept serving every frame;
``deploy_request`` is a request for text-det with a long probation.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import CameraSection, DeploySection, SourceSection
from agent.models.fetch import load_public_key
from agent.models.loader import EngineOptions, load_serving
from agent.models.manager import DeployFailed, DeploymentManager, DeployRequest
from agent.models.probation import Probation
from agent.models.store import ModelStore
from agent.monitor.latency import LatencyRecorder
from agent.runtime.slot import EngineSlot
from agent.vision.cameras import CameraSet
from agent.vision.pipeline import FrameResult, Pipeline
from agent.vision.scheduler import Scheduler
from agent.vision.sources import FrameSource
from agent.wire import DeploymentState

__all__ = ["LONG_PROBATION", "Rig", "deploy_request", "refused"]

LONG_PROBATION = Probation(window_s=3600.0, max_error_rate=1.0, max_nonfinite=0, max_latency_ratio=100.0)
"""A probation that never ends or fails within a test: the swap itself is what is checked."""


class Rig:
    """A serving pipeline (text-det v4) with a deployment manager, like the daemon wires them.

    With ``cameras`` > 0, that many cameras (copies of the demo video) share the engine
    through the scheduler; ``batched_first`` serves v4 unfused (dynamic batch) and has
    the manager load fused (batch 1) models, or the other way round."""

    def __init__(self, tmp: Path, demo: Path, cameras: int = 0, batched_first: bool = False,
                 **settings: object) -> None:
        self.store = ModelStore(tmp / "engines")
        self.store.install(demo / "models" / "text-det-v4")
        self.slot = EngineSlot()
        first = EngineOptions(threads=1, fuse_preprocessing=not batched_first)
        later = EngineOptions(threads=1, fuse_preprocessing=batched_first or not cameras)
        self.slot.swap(load_serving(self.store.current("text-det"), first))
        self.frames: list[tuple[int, str]] = []
        self.by_camera: dict[str, list[int]] = {}
        self.batches: list[tuple[str, int]] = []
        self.source: FrameSource | CameraSet
        if cameras:
            videos = [shutil.copy(demo / "video.mp4", tmp / f"cam{i}.mp4") for i in range(cameras)]
            self.source = CameraSet([CameraSection(name=f"cam{i}", uri=str(v), pace="none")
                                     for i, v in enumerate(videos)], "text-det")
            frames: FrameSource | Scheduler = Scheduler(self.source)
        else:
            self.source = frames = FrameSource(SourceSection(uri=str(demo / "video.mp4"), pace="none", loop=True))
        self.pipeline = Pipeline(frames, self.slot, LatencyRecorder(200), observers=[self._seen])
        self.reports: list[object] = []
        self.swaps: list[tuple[str, str | None, str]] = []
        # The budget only keeps a hung warm-up from passing: the 3.5x slow test model's warm-up beside the
        # unpaced serving loop was estimated at 35.6 s in a loaded full run here. Refusals over the budget
        # are tested with their own budget (test_a_model_over_the_latency_budget_is_refused).
        defaults = {"allowed_schemes": ("http", "file"), "latency_budget_ms": 120_000.0, "load_nice": 0}
        self.settings = DeploySection.model_validate({**defaults, **settings})
        public = self.settings.public_key_file
        self.manager = DeploymentManager(
            store=self.store, slot=self.slot, options=later, settings=self.settings,
            public_key=load_public_key(public) if public else None,
            feeds_for=self.pipeline.feeds_for, stats=self.pipeline.counters.stats,
            report=self._report, swapped=self.on_swap,
        )

    def _seen(self, result: FrameResult) -> None:
        self.frames.append((result.frame.index, result.version))
        self.by_camera.setdefault(result.camera, []).append(result.frame.index)
        self.batches.append((result.version, result.batch))
        assert result.error is None, result.error

    async def _report(self, status: object) -> None:
        self.reports.append(status)

    async def on_swap(self, new, old, reason) -> None:  # type: ignore[no-untyped-def]
        """The manager's ``swapped`` callback: each swap recorded (a subclass may add to it)."""
        self.swaps.append((new.version, old.version if old else None, reason))

    async def start(self) -> None:
        self.source.start()
        self.pipeline.start()
        await self.frames_past(len(self.frames) + 3)

    async def frames_past(self, count: int, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.frames) < count:
            assert loop.time() < deadline, f"only {len(self.frames)} frames processed"
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.manager.close()
        self.pipeline.stop(10)
        self.source.stop()
        self.slot.clear()

    def assert_no_frame_skipped(self) -> None:
        for camera, indices in self.by_camera.items():
            assert indices == list(range(indices[0], indices[0] + len(indices))), f"{camera}: a frame was skipped"


def deploy_request(url: str, digest: str = "0" * 64, **fields: object) -> DeployRequest:
    """text-det v9 from ``url`` under ``LONG_PROBATION``; ``fields`` replace any of it."""
    return DeployRequest(**{"name": "text-det", "version": "v9", "url": url, "sha256": digest,  # type: ignore[arg-type]
                            "probation": LONG_PROBATION, **fields})


def refused(tmp: Path, demo: Path, request: DeployRequest, rig_class: type[Rig] = Rig,
            **settings: Any) -> tuple[DeployFailed, Rig]:
    """Deploy ``request`` to a rig serving v4: it must fail, report the failure's code, leave nothing
    half-written in the store and v4 serving every frame, with no swap."""
    async def scenario() -> tuple[DeployFailed, Rig]:
        rig = rig_class(tmp, demo, **settings)
        await rig.start()
        try:
            with pytest.raises(DeployFailed) as caught:
                await rig.manager.deploy(request)
            await rig.frames_past(len(rig.frames) + 3)
        finally:
            rig.stop()
        return caught.value, rig

    failure, rig = asyncio.run(scenario())
    assert {v for _, v in rig.frames} == {"v4"}, "the old model must keep serving"
    rig.assert_no_frame_skipped()
    assert rig.swaps == []
    assert rig.store.current_version("text-det") == "v4"
    last = rig.reports[-1]
    assert last.state == DeploymentState.FAILED and last.error["code"] == failure.code  # type: ignore[attr-defined]
    leftovers = [p for p in (tmp / "engines").rglob("*") if ".download" in p.name or p.name.startswith(".tmp")]
    assert leftovers == []
    assert rig.store.versions("text-det") == ["v4"]
    return failure, rig
