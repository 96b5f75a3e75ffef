"""The Engine protocol: what every runtime (ONNX Runtime, TensorRT) offers the agent, and the shapes of its tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from agent.core import AgentError

__all__ = ["Engine", "EngineError", "EngineLoadError", "ShapeProfile", "TensorSpec"]


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


@dataclass(frozen=True)
class ShapeProfile:
    """The shapes one dynamic input accepts: TensorRT's optimization profile min/opt/max."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"profile ranks differ: min {self.min}, opt {self.opt}, "
                             f"max {self.max}")
        for axis, (low, mid, high) in enumerate(zip(self.min, self.opt, self.max, strict=True)):
            if not 0 <= low <= mid <= high:
                raise ValueError(f"profile dim {axis}: need 0 <= min <= opt <= max, got "
                                 f"{low}, {mid}, {high}")

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise EngineError naming the first dimension of ``shape`` outside the profile."""
        if len(shape) != len(self.min):
            raise EngineError(f"input {name!r}: rank {len(shape)}, the engine wants "
                              f"{len(self.min)}")
        for axis, (got, low, high) in enumerate(zip(shape, self.min, self.max, strict=True)):
            if not low <= got <= high:
                raise EngineError(
                    f"input {name!r} shape {shape} is outside the engine's optimization profile: "
                    f"dim {axis} = {got}, allowed {low}..{high} "
                    f"(min {self.min}, max {self.max}); rebuild the engine with a wider profile"
                )


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
