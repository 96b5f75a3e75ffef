"""Magnitude pruning of a model's weights, unstructured or 2:4, with a per-layer report.

``unstructured``: in every Conv/ConvTranspose/Gemm/MatMul weight, the smallest
magnitudes are set to zero until the layer reaches the target sparsity (each
layer to the same target, so no layer is emptied). ``2:4``: in every group of
four weights along the reduction axis, the two smallest are zeroed (50%), the
pattern Ampere-and-later sparse tensor cores (TensorRT's ``SPARSE_WEIGHTS``)
run faster; it reuses ``agent.models.sparsity``. Without fine-tuning afterwards
both cost accuracy; ``edge-agent model compare`` says how much.

Dense storage keeps the file size; zeros compress well in a bundle's transport.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnx
from onnx import numpy_helper

from agent.core import one_of
from agent.models import Manifest, prune_model_2to4, sparsity_report
from agent.tools.errors import PruneError
from agent.tools.modelref import ModelRef, check_empty, write_model_folder
from agent.tools.onnxutil import constants_to_initializers, set_metadata, weight_uses

__all__ = ["LayerSparsity", "Pattern", "PruneReport", "format_report", "parse_pattern", "prune_folder", "prune_onnx"]

Pattern = Literal["unstructured", "2:4"]
PATTERNS: tuple[Pattern, ...] = get_args(Pattern)
REPORT_FILE = "prune_report.json"
TWO_FOUR_SPARSITY = 0.5


@dataclass(frozen=True)
class LayerSparsity:
    """One weight's zeros before and after pruning."""

    name: str
    op_type: str
    """The operator reading the weight: Conv, ConvTranspose, Gemm or MatMul."""
    shape: tuple[int, ...]
    elements: int
    zeros_before: int
    zeros_after: int

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.elements if self.elements else 0.0


@dataclass(frozen=True)
class PruneReport:
    """The sparsity every weight reached, and the totals (``prune_report.json``)."""

    pattern: Pattern
    target: float
    layers: tuple[LayerSparsity, ...]
    two_four_fraction: float
    """Share of 2:4-eligible weight elements that are 2:4 sparse (what TensorRT would use)."""

    @property
    def elements(self) -> int:
        return sum(layer.elements for layer in self.layers)

    @property
    def sparsity(self) -> float:
        total = self.elements
        return sum(layer.zeros_after for layer in self.layers) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        layers = [{**asdict(layer), "sparsity": layer.sparsity} for layer in self.layers]
        return {"pattern": self.pattern, "target": self.target, "sparsity": self.sparsity,
                "elements": self.elements, "two_four_fraction": self.two_four_fraction, "layers": layers}


def _prune_unstructured(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the ``sparsity`` share of smallest magnitudes (ties broken by position)."""
    flat = weight.reshape(-1)
    drop = round(sparsity * flat.size)
    if drop == 0:
        return weight
    order = np.argsort(np.abs(flat), kind="stable")
    pruned = flat.copy()
    pruned[order[:drop]] = 0
    result: np.ndarray = pruned.reshape(weight.shape)
    return result


def parse_pattern(text: str) -> Pattern:
    """``text`` (a flag) as a weight pruning pattern; PruneError when it is none."""
    pattern = one_of(text, PATTERNS)
    if pattern is None:
        raise PruneError(f"pattern {text!r}: use unstructured or 2:4")
    return pattern


def prune_onnx(model: onnx.ModelProto, sparsity: float, pattern: Pattern) -> tuple[onnx.ModelProto, PruneReport]:
    """A pruned copy of ``model`` and the sparsity each weight reached."""
    parse_pattern(pattern)  # a caller without types may pass any string
    if not 0.0 <= sparsity < 1.0:
        raise PruneError(f"sparsity {sparsity} is outside [0, 1)")
    if pattern == "2:4" and sparsity != TWO_FOUR_SPARSITY:
        raise PruneError(f"the 2:4 pattern is 50% sparse by definition; --sparsity {sparsity} does not fit it")
    source = constants_to_initializers(model)
    before = {use.name: int(np.count_nonzero(numpy_helper.to_array(use.initializer) == 0))
              for use in weight_uses(source)}
    if not before:
        raise PruneError("the model has no Conv/ConvTranspose/Gemm/MatMul weights to prune")
    if pattern == "2:4":
        pruned = prune_model_2to4(source)
    else:
        pruned = source
        for use in weight_uses(pruned):
            weight = numpy_helper.to_array(use.initializer)
            use.initializer.CopyFrom(numpy_helper.from_array(_prune_unstructured(weight, sparsity), use.name))
    layers = []
    for use in weight_uses(pruned):
        weight = numpy_helper.to_array(use.initializer)
        layers.append(LayerSparsity(use.name, use.op_type, tuple(weight.shape), int(weight.size),
                                    before[use.name], int(np.count_nonzero(weight == 0))))
    report = PruneReport(pattern, sparsity, tuple(layers), sparsity_report(pruned).fraction)
    set_metadata(pruned, pruning={"pattern": pattern, "target": sparsity, "sparsity": report.sparsity})
    return pruned, report


def prune_folder(src: ModelRef, out_dir: Path, sparsity: float, pattern: Pattern,
                 *, version: str | None = None) -> tuple[Manifest, PruneReport]:
    """Prune ``src`` into the model folder ``out_dir``: model.onnx, manifest, prune_report.json."""
    check_empty(out_dir)
    pruned, report = prune_onnx(onnx.load(str(src.path)), sparsity, pattern)
    suffix = "-sparse24" if pattern == "2:4" else f"-pruned{round(sparsity * 100)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    manifest = write_model_folder(src, pruned, out_dir, version or src.manifest.version + suffix,
                                  f"{pattern} magnitude pruning ({report.sparsity:.0%}) of "
                                  f"{src.manifest.name} {src.manifest.version}")
    return manifest, report


def format_report(report: PruneReport, limit: int | None = None) -> str:
    """The per-layer table, then the totals."""
    rows: Sequence[LayerSparsity] = report.layers if limit is None else report.layers[:limit]
    width = max([len("weight")] + [len(layer.name) for layer in rows])
    lines = [f"{'weight':<{width}}  {'op':<13} {'shape':<18} {'elements':>9} {'before':>7} {'after':>7}"]
    for layer in rows:
        shape = "x".join(str(d) for d in layer.shape)
        before = layer.zeros_before / layer.elements if layer.elements else 0.0
        lines.append(f"{layer.name:<{width}}  {layer.op_type:<13} {shape:<18} {layer.elements:>9} "
                     f"{before:>7.1%} {layer.sparsity:>7.1%}")
    if limit is not None and len(report.layers) > limit:
        lines.append(f"... {len(report.layers) - limit} more layers")
    lines.append(f"total: {len(report.layers)} weights, {report.elements} elements, "
                 f"sparsity {report.sparsity:.1%} ({report.pattern}, target {report.target:.0%}); "
                 f"2:4-sparse share of eligible weights {report.two_four_fraction:.1%}")
    return "\n".join(lines)
