"""The model tools' errors: one family, caught by the CLI and printed as one line."""

from __future__ import annotations

from agent.core import AgentError

__all__ = [
    "CompareError",
    "DistillError",
    "ExportError",
    "FramesError",
    "PackError",
    "PruneError",
    "QuantizeError",
    "ToolError",
]


class ToolError(AgentError):
    """A model tool cannot do what it was asked; the message names what is wrong."""


class FramesError(ToolError):
    """A video or image folder gives no usable frames."""


class ExportError(ToolError):
    """A PyTorch model cannot be loaded or exported, or ONNX Runtime disagrees with it."""


class QuantizeError(ToolError):
    """A model cannot be quantized as asked."""


class PruneError(ToolError):
    """A model cannot be pruned as asked."""


class CompareError(ToolError):
    """Two models cannot be compared (no manifest, different tasks, no frames)."""


class PackError(ToolError):
    """A bundle cannot be written or does not check out."""


class DistillError(ToolError):
    """A student cannot be trained on the teacher's outputs."""
