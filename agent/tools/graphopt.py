"""Exact graph rewrites that make a model cheaper to run and kinder to INT8.

Some exporters leave per-channel affine steps (``Mul`` by a constant, ``Add`` of
a constant) beside convolutions, and spell HardSwish out as four operators;
PP-OCRv4's detector has about 170 such nodes around 60 convolutions. Every one
of them is a pass over an activation in FP32 and a requantization point in an
INT8 graph (noise, and time). The rewrites here are exact up to float rounding:

- ``fold_conv_affine``: ``Conv -> Mul(c) -> Add(d)`` becomes one Conv with
  ``W * c`` and ``B * c + d`` (c, d scalars or per output channel).
- ``fold_affine_into_conv``: ``Mul(a) -> Add(b) -> Conv`` with no padding becomes
  one Conv with ``W * a`` (per input channel) and ``B + sum(W * b)``; with padding
  the border would see ``b`` where it saw zeros, so padded convolutions are left.
- ``fuse_hardswish``: ``x * Clip(x + 3, 0, 6) / 6`` becomes ``HardSwish(x)``
  (opset 14 and later).

ONNX Runtime's own Conv+Mul/Add fusions do not fire on these graphs (the
constant comes first, or the Mul and Add are separate), hence these.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from agent.tools.onnxutil import copy_model, default_opset

__all__ = [
    "HARDSWISH_OPSET",
    "GraphOptReport",
    "drop_unused_initializers",
    "fold_affine_into_conv",
    "fold_conv_affine",
    "fuse_hardswish",
    "optimize_graph",
]

HARDSWISH_OPSET = 14
HARDSWISH_OFFSET = 3.0
HARDSWISH_CAP = 6.0


@dataclass(frozen=True)
class GraphOptReport:
    folded_after: int
    folded_before: int
    hardswish: int
    nodes_before: int
    nodes_after: int


class _Graph:
    """Index of a graph: producers, consumers, initializers; rebuilt after each rewrite."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.inits = {init.name: init for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self.uses = Counter(name for node in graph.node for name in node.input)

    def array(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def const_operand(self, node: onnx.NodeProto, tensor: str) -> np.ndarray | None:
        """The constant other input of a binary ``node`` whose variable input is ``tensor``."""
        if len(node.input) != 2 or tensor not in node.input:
            return None
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        return self.array(other)

    def set_init(self, name: str, value: np.ndarray) -> str:
        """Write ``value`` under ``name``, or under a fresh name when others still read the old one."""
        if self.uses[name] > 1:
            base, index = f"{name}_folded", 0
            while f"{base}{index}" in self.inits:
                index += 1
            name = f"{base}{index}"
            self.model.graph.initializer.append(numpy_helper.from_array(value, name))
            self.inits[name] = self.model.graph.initializer[-1]
            return name
        self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return name


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """``value`` as a vector of ``channels`` when it broadcasts per channel on NCHW, else None."""
    if value is None:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=np.float32)
    squeezed = value.reshape(-1)
    shapes_ok = value.ndim >= 3 and value.shape[-2:] == (1, 1) and squeezed.size == channels
    return squeezed.astype(np.float32) if shapes_ok and value.shape[-3] == channels else None


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _unpadded(conv: onnx.NodeProto) -> bool:
    auto_pad = _attr(conv, "auto_pad", b"NOTSET")
    pads = _attr(conv, "pads", [])
    return isinstance(pads, list) and not any(pads) and auto_pad in (b"NOTSET", b"VALID")


def _remove(model: onnx.ModelProto, dead: set[int], rename: dict[str, str]) -> None:
    nodes = [n for n in model.graph.node if id(n) not in dead]
    for node in nodes:
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _conv_params(g: _Graph, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    weight = g.array(conv.input[1]) if len(conv.input) > 1 else None
    if weight is None or weight.ndim != 4:
        return None
    bias = g.array(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0], np.float32)
    return (weight, bias) if bias is not None else None


def _set_conv(g: _Graph, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> None:
    conv.input[1] = g.set_init(conv.input[1], weight.astype(np.float32))
    if len(conv.input) > 2 and conv.input[2]:
        conv.input[2] = g.set_init(conv.input[2], bias.astype(np.float32))
    else:
        name = f"{conv.input[1]}_bias"
        g.model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), name))
        if len(conv.input) == 2:
            conv.input.append(name)
        else:
            conv.input[2] = name


def fold_conv_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold per-output-channel ``Mul``/``Add`` constants that follow a Conv into it."""
    out = copy_model(model)
    folded = 0
    while True:
        g = _Graph(out)
        dead: set[int] = set()
        rename: dict[str, str] = {}
        for conv in out.graph.node:
            if conv.op_type != "Conv" or id(conv) in dead:
                continue
            params = _conv_params(g, conv)
            nxt = g.only_consumer(conv.output[0])
            if params is None or nxt is None or nxt.op_type not in ("Mul", "Add") or id(nxt) in dead:
                continue
            weight, bias = params
            const = _per_channel(g.const_operand(nxt, conv.output[0]), weight.shape[0])
            if const is None:
                continue
            if nxt.op_type == "Mul":
                _set_conv(g, conv, weight * const[:, None, None, None], bias * const)
            else:
                _set_conv(g, conv, weight, bias + const)
            dead.add(id(nxt))
            rename[conv.output[0]] = nxt.output[0]
        if not dead:
            return out, folded
        folded += len(dead)
        _remove(out, dead, rename)


def fold_affine_into_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold a ``Mul``/``Add`` constant that feeds only an unpadded, ungrouped Conv into it."""
    out = copy_model(model)
    folded = 0
    while True:
        g = _Graph(out)
        dead: set[int] = set()
        for node in out.graph.node:
            if node.op_type not in ("Mul", "Add") or id(node) in dead:
                continue
            conv = g.only_consumer(node.output[0])
            if conv is None or conv.op_type != "Conv" or conv.input[0] != node.output[0]:
                continue
            params = _conv_params(g, conv)
            if params is None or _attr(conv, "group", 1) != 1 or not _unpadded(conv):
                continue
            weight, bias = params
            variable = next((name for name in node.input if name not in g.inits), None)
            const = _per_channel(g.const_operand(node, variable or ""), weight.shape[1])
            if variable is None or const is None:
                continue
            if node.op_type == "Mul":
                _set_conv(g, conv, weight * const[None, :, None, None], bias)
            else:
                _set_conv(g, conv, weight, bias + (weight * const[None, :, None, None]).sum(axis=(1, 2, 3)))
            conv.input[0] = variable
            dead.add(id(node))
        if not dead:
            return out, folded
        folded += len(dead)
        _remove(out, dead, {})


def _scalar(g: _Graph, node: onnx.NodeProto, tensor: str) -> float | None:
    value = g.const_operand(node, tensor)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _clip_bounds(g: _Graph, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
    low = g.array(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
    high = g.array(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
    return (None if low is None else float(low.reshape(())), None if high is None else float(high.reshape(())))


def fuse_hardswish(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace ``x * Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) with HardSwish; needs opset >= 14."""
    if default_opset(model) < HARDSWISH_OPSET:
        return model, 0
    out = copy_model(model)
    g = _Graph(out)
    dead: set[int] = set()
    fused: list[onnx.NodeProto] = []
    for add in out.graph.node:
        if add.op_type != "Add":
            continue
        x = next((name for name in add.input if name not in g.inits), None)
        if x is None or _scalar(g, add, x) != HARDSWISH_OFFSET:
            continue
        clip = g.only_consumer(add.output[0])
        if clip is None or clip.op_type != "Clip" or _clip_bounds(g, clip) != (0.0, HARDSWISH_CAP):
            continue
        mul = g.only_consumer(clip.output[0])
        if mul is None or mul.op_type != "Mul" or set(mul.input) != {x, clip.output[0]}:
            continue
        last = g.only_consumer(mul.output[0])
        if last is None:
            continue
        scale = _scalar(g, last, mul.output[0])
        exact = (last.op_type == "Div" and scale == HARDSWISH_CAP and last.input[1] != mul.output[0]) or (
            last.op_type == "Mul" and scale is not None and np.isclose(scale, 1.0 / HARDSWISH_CAP))
        if not exact:
            continue
        dead |= {id(add), id(clip), id(mul), id(last)}
        fused.append(helper.make_node("HardSwish", [x], [last.output[0]],
                                      name=f"{last.name or last.output[0]}_hardswish"))
    _remove(out, dead, {})
    out.graph.node.extend(fused)
    return _toposort(out), len(fused)


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in an order where every input is produced before it is read."""
    graph = model.graph
    ready = {vi.name for vi in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("the graph has a cycle or reads a tensor nothing produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the initializers no node reads any more (folded constants)."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def optimize_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphOptReport]:
    """All rewrites (HardSwish only where the opset is 14 or later)."""
    before = len(model.graph.node)
    optimized, after = fold_conv_affine(model)
    optimized, into = fold_affine_into_conv(optimized)
    optimized, after_again = fold_conv_affine(optimized)
    optimized, swish = fuse_hardswish(optimized)
    drop_unused_initializers(optimized)
    report = GraphOptReport(after + after_again, into, swish, before, len(optimized.graph.node))
    return optimized, report
