"""What the deployment benches share: the demo's text-det v4 serving, its v4 and v6 bundles, the real manager.

``demo_rig(demo, root)`` installs v4 in a store under ``root``, packs both versions of the
demo as bundles to deploy from ``file://`` and loads v4 into a slot; the bench builds its own
cameras and pipeline on that slot, then ``rig.manager(pipeline, settings)`` and, at the end,
``rig.stop(pipeline, cameras, manager)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core import DeploySection
from agent.models import (
    DeploymentManager,
    DeploymentStatus,
    EngineOptions,
    ModelStore,
    Probation,
    load_serving,
    pack_bundle,
    sha256_file,
)
from agent.runtime import EngineSlot
from agent.vision import CameraSet, Pipeline

__all__ = ["NO_PROBATION", "STOP_TIMEOUT_S", "DemoRig", "demo_bundles", "demo_rig", "nothing"]

NO_PROBATION = Probation(3600.0, 1.0, 0, 100.0)
"""Probation that never fails a swap (the next deployment commits it early)."""
STOP_TIMEOUT_S = 10.0
"""How long the pipeline's frame loop gets to end its frame at the end of a bench."""


async def nothing(*_: Any) -> None:
    """The manager's ``report`` and ``swapped`` callables in a bench: nobody listens."""
    return None


def demo_bundles(demo: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """text-det v4 and v6 of the demo as bundles under ``root``, with their sha256."""
    out = {}
    for version in ("v4", "v6"):
        path = root / f"text-det-{version}.tar"
        pack_bundle(demo / "models" / f"text-det-{version}", path)
        out[version] = (path, sha256_file(path))
    return out


@dataclass(frozen=True)
class DemoRig:
    """text-det v4 serving from a store of its own, and the demo's v4 and v6 bundles to deploy."""

    store: ModelStore
    slot: EngineSlot
    options: EngineOptions
    bundles: dict[str, tuple[Path, str]]
    """By version: the bundle's path and its sha256."""

    def manager(self, pipeline: Pipeline, settings: DeploySection,
                report: Callable[[DeploymentStatus], Awaitable[None]] = nothing) -> DeploymentManager:
        """The real deployment manager on this store and slot, fed by ``pipeline``; ``report`` takes each state."""
        return DeploymentManager(store=self.store, slot=self.slot, options=self.options, settings=settings,
                                 public_key=None, feeds_for=pipeline.feeds_for, stats=pipeline.counters.stats,
                                 report=report, swapped=nothing)

    def stop(self, pipeline: Pipeline, cameras: CameraSet, manager: DeploymentManager) -> None:
        """Stops the frame loop, the cameras and the manager, then waits for every engine's close."""
        pipeline.stop(STOP_TIMEOUT_S)
        cameras.stop()
        manager.close()
        self.slot.clear()
        self.slot.drain()


def demo_rig(demo: Path, root: Path, threads: int) -> DemoRig:
    """v4 of the demo installed under ``root`` and serving (ONNX Runtime, ``threads``), both bundles packed."""
    store = ModelStore(root / "engines", keep=3)
    store.install(demo / "models" / "text-det-v4")
    bundles = demo_bundles(demo, root)
    slot = EngineSlot()
    options = EngineOptions(threads=threads)
    slot.swap(load_serving(store.current("text-det"), options))
    return DemoRig(store, slot, options, bundles)

