"""Mixed-precision INT8: each quantizable layer's effect on the output, the most sensitive kept in float.

The ranges are calibrated once (ONNX Runtime's calibration cache), so each
variant is only a re-run of the quantizer. Sensitivity of a node: the relative
error ``||Q - F|| / ||F||`` of the model's output on a few probe frames when
that node alone is quantized (its input, weights and output through Q/DQ). The
nodes are ranked by it; then the search keeps the first ``k`` in float, with
``k`` growing 1, 2, 4, ... until the task agreement with the FP32 model
(``compare_models`` on held-out frames: matched-box F1 or top-1, through the
agent's preprocessing and head) reaches the target, and bisects between the
last ``k`` that missed it and the first that met it. The result is the variant
with the fewest float nodes that met the target; when none does, the one that
came closest, reported as not met.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import structlog

from agent.core import UNKNOWN_TOTAL, Progress
from agent.runtime import OnnxRuntimeEngine
from agent.tools.compare import compare_models
from agent.tools.errors import QuantizeError
from agent.tools.modelref import ModelRef

__all__ = [
    "LayerSensitivity",
    "SearchStep",
    "SensitivityReport",
    "format_sensitivity",
    "layer_sensitivity",
    "mixed_precision",
    "next_float_nodes",
    "quantizable_nodes",
]

log = structlog.get_logger(__name__)

Quantize = Callable[..., onnx.ModelProto]
"""agent.tools.quantize.quantize_onnx's shape: the prepared model, feeds and options in, the INT8 model out."""

REPORT_FILE = "sensitivity_report.json"
PROBE_THREADS = 2
"""Intra-op threads of the probe sessions (the agent's default)."""
MAX_SEARCH_STEPS = 18
"""Doubling then bisection to one node needs 2 * log2(n) + 2 steps: 18 covers 256 candidate nodes."""
NEGLIGIBLE_ERROR = 1e-6
"""A node whose quantization changes the output less than this is not worth keeping in float."""
LAYERS_STAGE, SEARCH_STAGE = "sensitivity", "search"
"""The stages reported: one quantizable node measured at a time, then one variant of the search at a time."""


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    rel_error: float
    """Relative output error with this node alone quantized."""
    kept_float: bool = False


@dataclass(frozen=True)
class SearchStep:
    kept_float: int
    agreement: float
    rel_error: float | None


@dataclass(frozen=True)
class SensitivityReport:
    metric: str
    target: float
    met: bool
    agreement: float
    layers: tuple[LayerSensitivity, ...]
    steps: tuple[SearchStep, ...]
    seconds: float

    @property
    def kept_float(self) -> tuple[str, ...]:
        return tuple(layer.node for layer in self.layers if layer.kept_float)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "target": self.target, "met": self.met, "agreement": self.agreement,
                "kept_float": list(self.kept_float), "seconds": self.seconds,
                "steps": [asdict(step) for step in self.steps], "layers": [asdict(layer) for layer in self.layers]}


def quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes ONNX Runtime's Q/DQ quantizer can quantize."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    kinds = set(QDQRegistry) | set(QLinearOpsRegistry)
    return [node for node in model.graph.node if node.op_type in kinds]


def _outputs(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    engine = OnnxRuntimeEngine.load(model.SerializeToString(), threads=PROBE_THREADS)
    try:
        name = engine.outputs[0].name
        return [engine.infer(feed)[name] for feed in feeds]
    finally:
        engine.close()


def _rel_error(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    diff = sum(float(np.square(o.astype(np.float64) - r).sum()) for o, r in zip(outputs, reference, strict=True))
    ref = sum(float(np.square(r.astype(np.float64)).sum()) for r in reference)
    return math.sqrt(diff / ref) if ref > 0 else math.sqrt(diff)


def layer_sensitivity(prepared: onnx.ModelProto, calibration: list[dict[str, np.ndarray]],
                      probes: Sequence[dict[str, np.ndarray]], options: Any, cache: Path,
                      progress: Progress | None = None, *, quantize: Quantize) -> list[LayerSensitivity]:
    """Every quantizable node's sensitivity, most sensitive first (``options``: a ``QuantizeOptions``).

    ``progress``: the calibration (the first node's quantization fills ``cache``), then each node measured.
    ``quantize``: agent.tools.quantize's ``quantize_onnx`` (given, so that this module does not import it back)."""

    reference = _outputs(prepared, probes)
    excluded = set(options.exclude_nodes)
    layers = []
    nodes = [node for node in quantizable_nodes(prepared) if node.name not in excluded]
    for index, node in enumerate(nodes):
        single = quantize(prepared, calibration, options, calibration_cache=cache, only_nodes=[node.name],
                               progress=progress if index == 0 else None)
        layers.append(LayerSensitivity(node.name, node.op_type, _rel_error(_outputs(single, probes), reference)))
        if progress is not None:
            progress(LAYERS_STAGE, index + 1, len(nodes))
    return sorted(layers, key=lambda layer: -layer.rel_error)


def next_float_nodes(done: dict[int, float], target: float, total: int) -> int | None:
    """The next number of float nodes to try, or None when the search is over."""
    met = sorted(k for k, value in done.items() if value >= target)
    missed = sorted(k for k, value in done.items() if value < target)
    if not met:
        if missed and missed[-1] >= total:
            return None
        return min(total, max(1, 2 * missed[-1])) if missed else 0
    low = max((k for k in missed if k < met[0]), default=-1)
    if met[0] - low <= 1:
        return None
    return (low + met[0]) // 2


def mixed_precision(source: ModelRef, prepared: onnx.ModelProto, calibration: list[dict[str, np.ndarray]],
                    probes: Sequence[dict[str, np.ndarray]], eval_frames: Sequence[np.ndarray], options: Any,
                    target: float, *, threads: int = PROBE_THREADS,
                    progress: Progress | None = None,
                    quantize: Quantize) -> tuple[onnx.ModelProto, SensitivityReport]:
    """The INT8 model with the fewest float nodes whose agreement with ``source`` reaches ``target``
    (``quantize``: agent.tools.quantize's ``quantize_onnx``)."""

    if not 0.0 < target <= 1.0:
        raise QuantizeError(f"target agreement {target} is outside (0, 1]")
    if not eval_frames:
        raise QuantizeError("a target agreement needs held-out frames to measure it on")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-agent-sens-") as tmp:
        cache = Path(tmp) / "ranges.json"
        ranked = [layer for layer in layer_sensitivity(prepared, calibration, probes, options, cache, progress,
                                                          quantize=quantize)
                  if layer.rel_error > NEGLIGIBLE_ERROR]
        order = [layer.node for layer in ranked]
        done: dict[int, float] = {}
        steps: list[SearchStep] = []
        models: dict[int, onnx.ModelProto] = {}
        metric = "top1"
        while len(steps) < MAX_SEARCH_STEPS:
            k = next_float_nodes(done, target, len(order))
            if k is None or k in done:
                break
            variant_options = type(options)(**{**asdict(options),
                                               "exclude_nodes": (*options.exclude_nodes, *order[:k])})
            model = quantize(prepared, calibration, variant_options, calibration_cache=cache)
            path = Path(tmp) / f"k{k}.onnx"
            onnx.save(model, str(path))
            agreement = compare_models(source, ModelRef(path, source.manifest), eval_frames,
                                       threads=threads).agreement
            metric = agreement.metric
            done[k], models[k] = agreement.value, model
            steps.append(SearchStep(k, agreement.value, agreement.rel_error))
            log.info("sensitivity_step", kept_float=k, agreement=round(agreement.value, 4), target=target)
            if progress is not None:
                progress(SEARCH_STAGE, len(steps), UNKNOWN_TOTAL,
                         note=f"{k} float -> {agreement.metric} {agreement.value:.3f} (target {target:.3f})")
    passing = [k for k, value in done.items() if value >= target]
    chosen = min(passing) if passing else max(done, key=lambda k: (done[k], -k))
    kept = set(order[:chosen])
    layers = tuple(LayerSensitivity(layer.node, layer.op_type, layer.rel_error, layer.node in kept)
                   for layer in ranked)
    report = SensitivityReport(metric, target, bool(passing), done[chosen], layers, tuple(steps),
                               time.monotonic() - started)
    return models[chosen], report


def format_sensitivity(report: SensitivityReport, limit: int | None = None) -> str:
    """The per-layer table (most sensitive first), the search steps and the outcome."""
    rows = report.layers if limit is None else report.layers[:limit]
    width = max([len("node")] + [len(layer.node) for layer in rows])
    lines = [f"{'node':<{width}}  {'op':<18} {'rel.err':>8}  precision"]
    lines += [f"{layer.node:<{width}}  {layer.op_type:<18} {layer.rel_error:>8.4f}  "
              f"{'float' if layer.kept_float else 'int8'}" for layer in rows]
    if limit is not None and len(report.layers) > limit:
        lines.append(f"... {len(report.layers) - limit} more layers")
    name = "top-1" if report.metric == "top1" else "box F1"
    lines.append("search: " + ", ".join(f"{s.kept_float} float -> {name} {s.agreement:.3f}" for s in report.steps))
    lines.append(f"{'met' if report.met else 'NOT met'}: {name} {report.agreement:.3f} against target "
                 f"{report.target:.3f} with {len(report.kept_float)} of {len(report.layers)} sensitive nodes in float "
                 f"({report.seconds:.0f} s)")
    return "\n".join(lines)
