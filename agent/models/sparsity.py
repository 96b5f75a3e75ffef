"""2:4 structured sparsity of an ONNX model's weights (what TensorRT's SPARSE_WEIGHTS uses).

Ampere and later GPUs (Jetson Orin included) run a convolution or matrix product
faster when, along the reduction axis (input channels), every group of four
consecutive weights holds at most two non-zeros. TensorRT picks such kernels only
when the build sets ``BuilderFlag.SPARSE_WEIGHTS``, and setting it on a dense
model only costs build time, so the builder asks :func:`sparsity_report` first.

Weights are found where exporters put them: graph initializers or ``Constant``
nodes, possibly behind ``Identity`` or ``DequantizeLinear`` (quantized models).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "GROUP",
    "MIN_SPARSE_FRACTION",
    "SparsityReport",
    "is_2to4_sparse",
    "prune_2to4",
    "prune_model_2to4",
    "sparsity_report",
]

GROUP = 4
"""Weights per group along the reduction axis."""
KEEP = 2
"""Non-zeros allowed per group."""
MIN_SPARSE_FRACTION = 0.5
"""Share of eligible weight elements that must be 2:4 sparse before the flag is worth it."""
PASS_THROUGH = ("Identity", "DequantizeLinear")


def _grouped(weight: np.ndarray, axis: int) -> np.ndarray:
    """``weight`` with ``axis`` last, zero-padded to a multiple of GROUP, as rows of GROUP."""
    moved = np.moveaxis(weight, axis, -1)
    pad = (-moved.shape[-1]) % GROUP
    if pad:
        widths = [(0, 0)] * (moved.ndim - 1) + [(0, pad)]
        moved = np.pad(moved, widths)
    return moved.reshape(-1, GROUP)


def is_2to4_sparse(weight: np.ndarray, axis: int) -> bool:
    """True when every group of four along ``axis`` has at most two non-zeros."""
    if weight.ndim == 0 or weight.shape[axis] < GROUP:
        return False
    return bool((np.count_nonzero(_grouped(weight, axis), axis=1) <= KEEP).all())


def prune_2to4(weight: np.ndarray, axis: int) -> np.ndarray:
    """A copy of ``weight`` keeping the two largest magnitudes of every group of four."""
    moved = np.moveaxis(weight, axis, -1)
    groups = _grouped(weight, axis).copy()
    drop = np.argsort(np.abs(groups), axis=1, kind="stable")[:, : GROUP - KEEP]
    np.put_along_axis(groups, drop, 0, axis=1)
    padded_len = moved.shape[-1] + (-moved.shape[-1]) % GROUP
    pruned = groups.reshape(*moved.shape[:-1], padded_len)[..., : moved.shape[-1]]
    return np.ascontiguousarray(np.moveaxis(pruned, -1, axis)).astype(weight.dtype)


@dataclass(frozen=True)
class SparsityReport:
    """Which weights could use sparse kernels and which of them are 2:4 sparse."""

    eligible: tuple[str, ...]
    sparse: tuple[str, ...]
    eligible_elements: int
    sparse_elements: int

    @property
    def fraction(self) -> float:
        return self.sparse_elements / self.eligible_elements if self.eligible_elements else 0.0

    @property
    def worth_flag(self) -> bool:
        """Whether a build should set ``SPARSE_WEIGHTS``."""
        return bool(self.sparse) and self.fraction >= MIN_SPARSE_FRACTION


def _weight_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """The reduction axis of a Conv/Gemm/MatMul weight, or None if sparse kernels cannot apply."""
    if node.op_type == "Conv" and weight.ndim >= 3:
        return 1
    if node.op_type == "Gemm" and weight.ndim == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 1 if trans_b else 0
    if node.op_type == "MatMul" and weight.ndim >= 2:
        return weight.ndim - 2
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    found = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.dims:
                found[node.output[0]] = value
    return found


def _weights(model: onnx.ModelProto) -> Iterator[tuple[str, np.ndarray, int]]:
    graph = model.graph
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        while name not in constants and name in producers:
            producer = producers[name]
            if producer.op_type not in PASS_THROUGH:
                break
            name = producer.input[0]
        if name not in constants:
            continue
        weight = numpy_helper.to_array(constants[name])
        axis = _weight_axis(node, weight)
        if axis is not None and weight.shape[axis] >= GROUP:
            yield name, weight, axis


def sparsity_report(model: onnx.ModelProto) -> SparsityReport:
    """Check every Conv/Gemm/MatMul weight with at least four reduction channels."""
    eligible, sparse = [], []
    eligible_elements = sparse_elements = 0
    seen = set()
    for name, weight, axis in _weights(model):
        if name in seen:
            continue
        seen.add(name)
        eligible.append(name)
        eligible_elements += weight.size
        if is_2to4_sparse(weight, axis):
            sparse.append(name)
            sparse_elements += weight.size
    return SparsityReport(tuple(eligible), tuple(sparse), eligible_elements, sparse_elements)


def prune_model_2to4(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every eligible weight pruned to 2:4 (no fine-tuning)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    constants = _constants(pruned.graph)
    for name, weight, axis in _weights(pruned):
        constants[name].CopyFrom(numpy_helper.from_array(prune_2to4(weight, axis), name))
    return pruned
