"""The Engine protocol: what every runtime (ONNX Runtime, TensorRT) offers the agent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from agent.core import AgentError

__all__ = ["Engine", "EngineError", "EngineLoadError", "TensorSpec"]


class EngineError(AgentError, RuntimeError):
    """An engine failed to load or to infer."""


class EngineLoadError(EngineError):
    """The model could not be turned into a serving engine (bad file, bad shape, no device)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an engine; ``None`` in ``shape`` is a dynamic dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def fits(self, array: np.ndarray) -> bool:
        if array.dtype != self.dtype or array.ndim != len(self.shape):
            return False
        return all(want is None or want == got for want, got in zip(self.shape, array.shape, strict=True))


@runtime_checkable
class Engine(Protocol):
    """A loaded model that turns named input arrays into named output arrays.

    ``infer`` is called from one frame worker at a time; ``close`` is called once,
    after the last frame that uses the engine is done, and gives memory back.
    """

    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
