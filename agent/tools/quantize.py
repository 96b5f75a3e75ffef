"""INT8 post-training static quantization to an explicit Q/DQ ONNX model.

Calibration frames go through the agent's own float preprocessing, so the
ranges the quantizer measures are those of the tensors the agent will feed.
Before quantizing, the graph is prepared: weights held in ``Constant`` nodes
become initializers (so they are quantized as weights, with their own ranges),
the opset is raised to 13 when older (a per-channel ``DequantizeLinear`` needs
its ``axis`` attribute, which opset 13 introduced; PP-OCRv4's detector is opset
12), or to 14 with the exact rewrites of ``graphopt`` (on by default: HardSwish
is an opset-14 operator), and ONNX Runtime's ``quant_pre_process`` folds
constants and batch norms and infers shapes.

Two targets. ``tensorrt``: signed INT8 activations and weights, symmetric (zero
point 0), the only Q/DQ TensorRT builds an explicit-precision INT8 engine from;
ONNX Runtime's CPU provider runs it too, slowly on x86. ``cpu``: unsigned
activations with signed weights (u8s8), the combination ONNX Runtime's x86
kernels are fastest at; TensorRT rejects uint8 Q/DQ.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import structlog

from agent.core import Progress
from agent.models import Manifest, sha256_file
from agent.runtime import OnnxRuntimeEngine
from agent.tools.errors import QuantizeError
from agent.tools.graphopt import HARDSWISH_OPSET, GraphOptReport, optimize_graph
from agent.tools.modelref import ModelRef, check_empty, write_model_folder
from agent.tools.onnxutil import (
    constants_to_initializers,
    default_opset,
    load_onnx,
    name_nodes,
    set_metadata,
    upgrade_opset,
)
from agent.tools.sensitivity import REPORT_FILE, SensitivityReport, mixed_precision
from agent.vision import Preprocessor

__all__ = [
    "MIN_QDQ_OPSET",
    "QuantizeOptions",
    "QuantizeResult",
    "calibration_feeds",
    "leading_nodes",
    "prepare_for_quantization",
    "quantize_model",
    "quantize_onnx",
    "simplify_model",
]

log = structlog.get_logger(__name__)

MIN_QDQ_OPSET = 13
"""DequantizeLinear's ``axis`` (per-channel weights) exists from opset 13 on."""
VERSION_SUFFIX = "-int8"
SIMPLIFIED_SUFFIX = "-simplified"
PROBE_FRAMES = 2
"""Frames each layer's sensitivity is measured on (a ranking, not the agreement: the search measures that)."""
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
CALIBRATE_STAGE = "calibrate"
"""The stage calibration reports its frames under, as ONNX Runtime's calibrator takes them."""

Method = Literal["minmax", "average", "entropy", "percentile"]
METHODS = ("minmax", "average", "entropy", "percentile")
PERCENTILE = 99.99
"""Percentile calibration keeps 99.99% of each tensor's values: on PP-OCRv4 it halved the error of minmax
(ORT's default, 99.999, clips too little to matter there)."""
Target = Literal["tensorrt", "cpu"]
Format = Literal["qdq", "qoperator"]


@dataclass(frozen=True)
class QuantizeOptions:
    method: Method = "minmax"
    """minmax: the extremes over all frames; average: the per-frame extremes averaged (ORT's moving
    average, robust to one odd frame); entropy and percentile: histograms, slower to calibrate."""
    target: Target = "tensorrt"
    per_channel: bool = False
    format: Format = "qdq"
    reduce_range: bool = False
    """Quantize weights to 7 bits: avoids u8s8 overflow on x86 CPUs without VNNI."""
    exclude_nodes: tuple[str, ...] = ()
    """Nodes left in float (sensitive layers)."""
    op_types: tuple[str, ...] = ()
    """Only quantize these op types (empty: every op type ONNX Runtime can quantize)."""
    optimize: bool = True
    """Apply the exact rewrites of ``graphopt`` first (folded affine steps, fused HardSwish)."""
    float_first: int = 0
    """Leave the first N convolutions (and everything before them) in float: the high-resolution
    stem is where a detector's 8-bit error starts."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"calibration method {self.method!r}: use {', '.join(METHODS)}")
        if self.target not in ("tensorrt", "cpu"):
            raise QuantizeError(f"target {self.target!r}: use tensorrt or cpu")
        if self.format not in ("qdq", "qoperator"):
            raise QuantizeError(f"format {self.format!r}: use qdq or qoperator")
        if self.target == "tensorrt" and self.format != "qdq":
            raise QuantizeError("TensorRT builds INT8 engines only from Q/DQ graphs: use format qdq "
                                "(or target cpu for QOperator)")
        if self.float_first < 0:
            raise QuantizeError(f"float_first {self.float_first} must be >= 0")


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    manifest: Manifest
    frames: int
    seconds: float
    source_opset: int
    opset: int
    sensitivity: SensitivityReport | None = None
    """With a target agreement: the per-layer sensitivities and the search that chose the float nodes."""


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run in ``path``: ONNX Runtime's symbolic shape inference leaves temporary files in the cwd."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def prepare_for_quantization(model: onnx.ModelProto, *, optimize: bool = True) -> onnx.ModelProto:
    """Weights as initializers, opset >= 13 (14 with ``optimize``), the exact rewrites of
    ``graphopt`` when ``optimize``, then constants folded, shapes inferred and nodes named."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = constants_to_initializers(model)
    prepared = upgrade_opset(prepared, HARDSWISH_OPSET if optimize else MIN_QDQ_OPSET)
    if optimize:
        prepared, report = optimize_graph(prepared)
        log.info("graph_optimized", nodes_before=report.nodes_before, nodes_after=report.nodes_after,
                 folded=report.folded_after + report.folded_before, hardswish=report.hardswish)
    with tempfile.TemporaryDirectory(prefix="edge-agent-quant-") as tmp, _working_directory(Path(tmp)):
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(prepared, str(source))
        try:
            quant_pre_process(str(source), str(target))
        except Exception as exc:  # symbolic shape inference gives up on some dynamic graphs
            log.info("symbolic_shape_inference_skipped", reason=str(exc))
            quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return name_nodes(onnx.load(str(target)))


def leading_nodes(model: onnx.ModelProto, compute_nodes: int) -> tuple[str, ...]:
    """The names of the nodes up to and including the ``compute_nodes``-th Conv/Gemm/MatMul."""
    if compute_nodes <= 0:
        return ()
    names: list[str] = []
    seen = 0
    for node in model.graph.node:
        names.append(node.name)
        seen += node.op_type in COMPUTE_OPS
        if seen == compute_nodes:
            break
    return tuple(names)


def calibration_feeds(model: onnx.ModelProto, manifest: Manifest,
                      frames: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``frames`` as the float input tensors the agent's preprocessing makes for ``model``."""
    engine = OnnxRuntimeEngine.load(model.SerializeToString(), threads=1)
    try:
        preprocessor = Preprocessor.for_inputs(manifest.preprocess, engine.inputs)
    finally:
        engine.close()
    if preprocessor.fused:
        raise QuantizeError("the model takes uint8 frames (preprocessing fused): quantize the float model")
    return [{preprocessor.input_name: preprocessor.prep(frame)[0]} for frame in frames]


class _Reader:
    """ONNX Runtime's CalibrationDataReader over prepared feeds; each feed taken is a calibrated frame."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], progress: Progress | None = None) -> None:
        self._feeds = iter(feeds)
        self._total = len(feeds)
        self._taken = 0
        self._progress = progress

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        if feed is not None and self._progress is not None:
            self._taken += 1
            self._progress(CALIBRATE_STAGE, self._taken, self._total)
        return feed


def quantize_onnx(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], options: QuantizeOptions,
                  *, calibration_cache: Path | None = None, only_nodes: Sequence[str] | None = None,
                  progress: Progress | None = None) -> onnx.ModelProto:
    """``model`` (prepared) quantized with ranges calibrated on ``feeds``.

    ``calibration_cache``: a JSON file of tensor ranges; written by the first call, read by later ones
    (so a sensitivity analysis calibrates once). ``only_nodes``: quantize just these nodes. ``progress``:
    told of each calibration frame as the calibrator takes it.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Reader, CalibrationDataReader):  # type: ignore[misc]  # onnxruntime's class is untyped
        pass

    methods = {"minmax": CalibrationMethod.MinMax, "average": CalibrationMethod.MinMax,
               "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    symmetric = options.target == "tensorrt"
    activations = QuantType.QInt8 if symmetric else QuantType.QUInt8
    extra: dict[str, object] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                "CalibMovingAverage": options.method == "average", "CalibPercentile": PERCENTILE}
    with tempfile.TemporaryDirectory(prefix="edge-agent-quant-") as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(source))
        try:
            quantize_static(
                str(source), str(target), Reader(feeds, progress),
                quant_format=QuantFormat.QDQ if options.format == "qdq" else QuantFormat.QOperator,
                activation_type=activations, weight_type=QuantType.QInt8,
                per_channel=options.per_channel, reduce_range=options.reduce_range,
                nodes_to_quantize=list(only_nodes) if only_nodes is not None else None,
                nodes_to_exclude=[*options.exclude_nodes, *leading_nodes(model, options.float_first)] or None,
                op_types_to_quantize=list(options.op_types) or None,
                calibrate_method=methods[options.method],
                calibration_providers=["CPUExecutionProvider"],
                calibration_cache_path=str(calibration_cache) if calibration_cache is not None else None,
                extra_options=extra,
            )
        except Exception as exc:  # the quantizer raises bare Exceptions and ValueErrors alike
            raise QuantizeError(f"ONNX Runtime's quantizer failed: {type(exc).__name__}: {exc}") from exc
        return onnx.load(str(target))


def quantize_model(src: ModelRef, frames: Sequence[np.ndarray], out_dir: Path, options: QuantizeOptions,
                   *, version: str | None = None, target_agreement: float | None = None,
                   eval_frames: Sequence[np.ndarray] = (), progress: Progress | None = None) -> QuantizeResult:
    """Quantize ``src`` on ``frames`` into the model folder ``out_dir`` (model.onnx + manifest).

    With ``target_agreement``, the most sensitive nodes stay in float until the agreement with ``src``
    on ``eval_frames`` reaches it (``sensitivity.mixed_precision``); the per-layer report is written
    beside the model as ``sensitivity_report.json``. The manifest keeps the source's preprocessing,
    head and reference; goldens are dropped (they hold float outputs); the version gets ``-int8``.
    ``progress`` is told of the calibration frames and, with a target, of the layers and the search.
    """
    check_empty(out_dir)
    started = time.monotonic()
    original = load_onnx(src.path)
    prepared = prepare_for_quantization(original, optimize=options.optimize)
    feeds = calibration_feeds(prepared, src.manifest, frames)
    report = None
    if target_agreement is None:
        quantized = quantize_onnx(prepared, feeds, options, progress=progress)
    else:
        probes = calibration_feeds(prepared, src.manifest, list(eval_frames)[:PROBE_FRAMES])
        quantized, report = mixed_precision(src, prepared, feeds, probes, eval_frames, options, target_agreement,
                                            progress=progress, quantize=quantize_onnx)
    set_metadata(quantized, quantization={**asdict(options), "frames": len(frames)},
                 source_sha256=sha256_file(src.path), opset=str(default_opset(quantized)))
    if report is not None:
        set_metadata(quantized, float_nodes=list(report.kept_float))
    manifest = write_model_folder(src, quantized, out_dir, version or src.manifest.version + VERSION_SUFFIX,
                                  f"INT8 {options.format.upper()} of {src.manifest.name} {src.manifest.version}")
    if report is not None:
        (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    seconds = time.monotonic() - started
    log.info("model_quantized", model=manifest.name, version=manifest.version, frames=len(frames),
             seconds=round(seconds, 1), target=options.target, per_channel=options.per_channel,
             float_nodes=None if report is None else len(report.kept_float))
    return QuantizeResult(out_dir / manifest.model_file, manifest, len(frames), seconds,
                          default_opset(original), default_opset(quantized), report)


def simplify_model(src: ModelRef, out_dir: Path, *, version: str | None = None) -> tuple[Manifest, GraphOptReport]:
    """The FP32 model with ``graphopt``'s exact rewrites, as a model folder (opset raised to 14)."""
    check_empty(out_dir)
    model = upgrade_opset(constants_to_initializers(load_onnx(src.path)), HARDSWISH_OPSET)
    optimized, report = optimize_graph(model)
    set_metadata(optimized, simplified=asdict(report), source_sha256=sha256_file(src.path),
                 opset=str(default_opset(optimized)))
    manifest = write_model_folder(src, optimized, out_dir, version or src.manifest.version + SIMPLIFIED_SUFFIX,
                                  f"exact graph rewrites of {src.manifest.name} {src.manifest.version}")
    return manifest, report
