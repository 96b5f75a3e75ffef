"""PyTorch -> ONNX, checked: ONNX Runtime must reproduce the PyTorch outputs before the file is kept.

``MODEL`` is a ``.pt``/``.pth`` file holding a TorchScript module or a whole
pickled ``nn.Module`` (a file of trusted origin: unpickling runs code), or
``package.module:factory``, a callable returning the module. The export uses
the TorchScript-based exporter (``dynamo=False``): the torch.export-based one
needs the ``onnxscript`` package, which the ``torch`` extra does not pull in.
The opset is recorded in the model's metadata (``edge_agent.opset``).

Needs the optional ``torch`` extra (``pip install 'edge-agent[torch]'``).
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from agent.runtime import OnnxRuntimeEngine
from agent.tools.errors import ExportError
from agent.tools.onnxutil import default_opset, set_metadata

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_ATOL",
    "EXPORT_RTOL",
    "ExportResult",
    "export_onnx",
    "load_torch_model",
    "parse_shape",
    "require_torch",
]

DEFAULT_OPSET = 17
EXPORT_RTOL = 1e-3
EXPORT_ATOL = 1e-4
INPUT_NAME = "x"
OUTPUT_NAME = "output"
CHECK_SEED = 0
SPATIAL_RANK = 4


def require_torch() -> Any:
    """The torch module, or ExportError saying how to get it."""
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError as exc:
        raise ExportError("PyTorch is not installed: pip install 'edge-agent[torch]'") from exc


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ExportError(f"input shape {text!r}: use dimensions joined by 'x', e.g. 1x3x224x224") from exc
    if not shape or min(shape) < 1:
        raise ExportError(f"input shape {text!r}: every dimension must be >= 1")
    return shape


def load_torch_model(ref: str) -> Any:
    """An ``nn.Module`` in eval mode from a ``.pt`` file or ``package.module:factory``."""
    torch = require_torch()
    path = Path(ref)
    if path.suffix in (".pt", ".pth") or path.is_file():
        if not path.is_file():
            raise ExportError(f"{path}: no such model file")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError:
            model = torch.load(str(path), map_location="cpu", weights_only=False)
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"{path}: holds a {type(model).__name__}, not a module (a state_dict needs "
                              "its module: use package.module:factory)")
    else:
        module_name, _, attr = ref.partition(":")
        if not module_name or not attr:
            raise ExportError(f"{ref!r}: give a .pt file or package.module:factory")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ExportError(f"{ref!r}: cannot import it: {exc}") from exc
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"{ref!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


@dataclass(frozen=True)
class ExportResult:
    """The written ONNX file and how closely ONNX Runtime reproduces PyTorch on it."""

    path: Path
    opset: int
    input_shape: tuple[int, ...]
    max_abs_error: float
    """Largest difference between ONNX Runtime's and PyTorch's outputs on the check input."""


def _torch_outputs(model: Any, sample: Any) -> list[np.ndarray]:
    torch = require_torch()
    with torch.no_grad():
        result = model(sample)
    results = result if isinstance(result, (tuple, list)) else [result]
    return [r.detach().cpu().numpy() for r in results]


def _dynamic_axes(input_rank: int, output_ranks: Sequence[int], names: Sequence[str], batch: bool,
                  spatial: bool) -> dict[str, dict[int, str]] | None:
    def axes(rank: int) -> dict[int, str]:
        chosen = {0: "batch"} if batch else {}
        if spatial and rank == SPATIAL_RANK:
            chosen.update({2: "height", 3: "width"})
        return chosen

    found = {name: axes(rank) for name, rank in zip((INPUT_NAME, *names), (input_rank, *output_ranks), strict=True)}
    found = {name: value for name, value in found.items() if value}
    return found or None


def export_onnx(model: Any, input_shape: Sequence[int], out: Path, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, dynamic_spatial: bool = False, source: str = "") -> ExportResult:
    """Export ``model`` for inputs of ``input_shape`` to ``out`` and check it on ONNX Runtime.

    ``dynamic_batch`` leaves the first axis of the input and outputs free;
    ``dynamic_spatial`` the last two of the input and of rank-4 outputs (dense heads).
    """
    torch = require_torch()
    shape = tuple(int(d) for d in input_shape)
    generator = torch.Generator().manual_seed(CHECK_SEED)
    sample = torch.rand(shape, generator=generator)
    expected = _torch_outputs(model, sample)
    names = [OUTPUT_NAME] if len(expected) == 1 else [f"{OUTPUT_NAME}_{i}" for i in range(len(expected))]
    axes = _dynamic_axes(len(shape), [e.ndim for e in expected], names, dynamic_batch, dynamic_spatial)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (sample,), buffer, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=names, dynamic_axes=axes, dynamo=False)
    except Exception as exc:  # the exporter raises many unrelated types for unsupported models
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    exported = onnx.load_from_string(buffer.getvalue())
    set_metadata(exported, opset=str(default_opset(exported)), exported_from=source or type(model).__name__,
                 input_shape="x".join(str(d) for d in shape))
    onnx.checker.check_model(exported)
    engine = OnnxRuntimeEngine.load(exported.SerializeToString(), threads=1)
    try:
        got = engine.infer({INPUT_NAME: sample.numpy()})
    finally:
        engine.close()
    worst = 0.0
    for name, want in zip(names, expected, strict=True):
        if got[name].shape != want.shape or not np.allclose(got[name], want, rtol=EXPORT_RTOL, atol=EXPORT_ATOL):
            raise ExportError(f"ONNX Runtime's {name} differs from PyTorch's (max abs error "
                              f"{float(np.abs(got[name] - want).max()):.3g}); the export is not kept")
        worst = max(worst, float(np.abs(got[name] - want).max()))
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(exported, str(out))
    return ExportResult(out, default_opset(exported), shape, worst)
