"""``[model]``: which model serves, on which runtime, and how it is built and kept."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.core.config.base import Section

__all__ = ["ModelSection"]


class ModelSection(Section):
    name: str = "text-det"
    """Which model of the store to serve (its ``current`` version)."""
    runtime: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    """``auto``: TensorRT where a GPU and TensorRT are present, else ONNX Runtime."""
    threads: int = Field(default=2, ge=1, le=256)
    """ONNX Runtime intra-op threads."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """ONNX Runtime execution providers, in order of preference."""
    keep_versions: int = Field(default=3, ge=2, le=100)
    """Installed versions kept per model (current and previous are never removed)."""
    store: Path | None = None
    """The engine store; default ``<state_dir>/engines``."""
    fuse_preprocessing: bool = True
    """Fold normalisation into the ONNX graph so the frame goes in as uint8 (both runtimes)."""
    tensorrt_shapes: tuple[str, ...] = ()
    """TensorRT optimization profiles of dynamic inputs, ``name:MIN:OPT:MAX`` (dims joined by 'x'); with
    fused preprocessing the image input is uint8 NHWC, e.g. ``x:1x480x640x3`` for a 640x480 camera."""
    tensorrt_precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    """``auto``: the precision the ONNX model carries (explicit Q/DQ INT8, FP16 weights, else FP32)."""
    workspace_mb: int = Field(default=1024, ge=1, le=65536)
    """TensorRT builder workspace."""
