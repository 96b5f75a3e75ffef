"""Small ONNX graph helpers the tools share: weights as initializers, opset upgrades, metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import version_converter

from agent.tools.errors import ToolError

__all__ = [
    "METADATA_PREFIX",
    "WeightUse",
    "constants_to_initializers",
    "copy_model",
    "default_opset",
    "load_onnx",
    "name_nodes",
    "set_metadata",
    "upgrade_opset",
    "weight_uses",
]

METADATA_PREFIX = "edge_agent."
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
PASS_THROUGH = frozenset({"Identity"})


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except FileNotFoundError as exc:
        raise ToolError(f"{path}: no such file") from exc
    except Exception as exc:  # protobuf raises DecodeError and friends for files that are not ONNX
        raise ToolError(f"{path}: not an ONNX model: {exc}") from exc


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ToolError("the model imports no default ONNX opset")


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose top-level ``Constant`` tensors are graph initializers.

    Some exporters (paddle2onnx among them) put every weight in a Constant node;
    the quantizer only treats initializers as weights, and would otherwise
    quantize the weights as activations with calibrated ranges.
    """
    out = copy_model(model)
    graph = out.graph
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and len(node.attribute) == 1 and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return out


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """``model`` converted to opset ``minimum`` when it is older; unchanged otherwise."""
    current = default_opset(model)
    if current >= minimum:
        return model
    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises RuntimeError or its own errors per adapter
        raise ToolError(f"cannot convert the model from opset {current} to {minimum}: {exc}") from exc
    if converted.ir_version < model.ir_version:
        converted.ir_version = model.ir_version
    return converted


def set_metadata(model: onnx.ModelProto, **values: Any) -> None:
    """Record ``values`` in the model's metadata as ``edge_agent.<key>`` (JSON for non-strings)."""
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in values.items():
        props[METADATA_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.helper.set_model_props(model, props)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a name (``nodes_to_exclude`` addresses nodes by name)."""
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


@dataclass(frozen=True)
class WeightUse:
    """A weight initializer and the first node that multiplies by it."""

    name: str
    op_type: str
    node: str
    initializer: onnx.TensorProto


def weight_uses(model: onnx.ModelProto) -> Iterator[WeightUse]:
    """Every initializer that is the weight (second input) of a Conv/ConvTranspose/Gemm/MatMul.

    An Identity between the initializer and the node is looked through; a weight
    shared by several nodes is yielded once.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        while name not in initializers and name in producers and producers[name].op_type in PASS_THROUGH:
            name = producers[name].input[0]
        if name in initializers and name not in seen:
            seen.add(name)
            yield WeightUse(name, node.op_type, node.name or node.output[0], initializers[name])
