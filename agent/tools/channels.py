"""Structured pruning: whole channels removed from an ONNX graph, so the model is smaller and faster on dense kernels.

A *channel group* starts at a convolution (``group == 1``) and follows its
output through operators that treat each channel on its own: activations,
``BatchNormalization``, ``Mul``/``Add``/``Sub``/``Div`` by a per-channel or
scalar constant, depthwise convolutions. It ends at the ordinary convolutions
that read those channels. When every path ends like that, a channel can go:
its filter in the producer, its slice of every per-channel constant and
depthwise filter on the way, its input slice in every consumer. A group that
reaches anything else (a residual ``Add`` of two tensors, ``Concat``, pooling
for squeeze-excitation, ``Resize``, a graph output) is left whole, because
another tensor's channels are tied to it.

Which channels go: the smallest by ``||W_producer[c]||_1 * sum ||W_consumer[:, c]||_1``
(a channel that is small going in or little read coming out matters least).
Each group keeps a multiple of ``CHANNEL_MULTIPLE`` channels (dense CPU and GPU
kernels block channels by 8). The pruned model needs recovery
(``agent.tools.recover``) to be worth anything: the channels removed still
carried signal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from agent.tools.errors import PruneError

__all__ = ["CHANNEL_MULTIPLE", "ChannelGroup", "ChannelReport", "channel_groups", "prune_channels"]

CHANNEL_MULTIPLE = 8
"""Kept channels per group are rounded to this (MLAS and cuDNN block channels by 8)."""
SAMPLES_PER_FRAME = 2048
"""Positions sampled per frame and tensor for ranking and refitting: enough for a 384-channel least squares."""
RIDGE = 1e-3
"""Ridge term of the refit, relative to the mean diagonal of the Gram matrix (keeps it well posed)."""
ACTIVATION_THREADS = 2
UNARY = frozenset({"Relu", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Identity", "Clip", "Tanh"})
ARITHMETIC = frozenset({"Mul", "Add", "Sub", "Div"})


@dataclass(frozen=True)
class ChannelGroup:
    producer: str
    members: tuple[str, ...]
    """Nodes between the producer and the consumers that carry the channels along."""
    consumers: tuple[str, ...]
    channels: int
    kept: int = 0


@dataclass(frozen=True)
class ChannelReport:
    ratio: float
    groups: tuple[ChannelGroup, ...]
    params_before: int
    params_after: int

    @property
    def channels_before(self) -> int:
        return sum(group.channels for group in self.groups)

    @property
    def channels_after(self) -> int:
        return sum(group.kept for group in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "params_before": self.params_before, "params_after": self.params_after,
                "channels_before": self.channels_before, "channels_after": self.channels_after,
                "groups": [asdict(group) for group in self.groups]}


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {init.name: init for init in model.graph.initializer}
        self.nodes = {node.name: node for node in model.graph.node}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {output.name for output in model.graph.output}

    def array(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def set_array(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give ``node``'s ``index``-th input a new initializer (never shared with another node)."""
        name = f"{node.input[index]}__pruned_{node.name}"
        init = numpy_helper.from_array(value.astype(np.float32), name)
        self.model.graph.initializer.append(init)
        self.inits[name] = self.model.graph.initializer[-1]
        node.input[index] = name


def _group_attr(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "group":
            return int(attr.i)
    return 1


def _channelwise_constant(value: np.ndarray | None, channels: int) -> bool:
    if value is None:
        return False
    if value.size == 1:
        return True
    squeezed = value.reshape(value.shape[-3:]) if value.ndim >= 3 else value
    return value.size == channels and squeezed.shape[0] == channels and squeezed.ndim == 3


def _depthwise(g: _Graph, node: onnx.NodeProto, channels: int) -> bool:
    weight = g.array(node.input[1])
    return weight is not None and _group_attr(node) == channels and weight.shape[:2] == (channels, 1)


def _trace(g: _Graph, producer: onnx.NodeProto, channels: int) -> ChannelGroup | None:
    """The channel group starting at ``producer``, or None when its channels are tied elsewhere."""
    members: list[str] = []
    consumers: list[str] = []
    frontier = [producer.output[0]]
    seen: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        if tensor in g.outputs:
            return None
        for node in g.consumers[tensor]:
            if node.name in seen:
                continue
            seen.add(node.name)
            data_first = node.input[0] == tensor
            unary = node.op_type in UNARY and all(n in g.inits or not n for n in node.input[1:])
            if data_first and (unary or node.op_type == "BatchNormalization"):
                members.append(node.name)
            elif node.op_type in ARITHMETIC and len(node.input) == 2:
                other = node.input[1] if data_first else node.input[0]
                if node.op_type in ("Sub", "Div") and not data_first:
                    return None
                if not _channelwise_constant(g.array(other), channels):
                    return None
                members.append(node.name)
            elif node.op_type == "Conv" and data_first and _depthwise(g, node, channels):
                members.append(node.name)
            elif node.op_type == "Conv" and data_first and _group_attr(node) == 1 and node.input[1] in g.inits:
                consumers.append(node.name)
                continue
            else:
                return None
            frontier.append(node.output[0])
    if not consumers:
        return None
    return ChannelGroup(producer.name, tuple(members), tuple(consumers), channels)


def channel_groups(model: onnx.ModelProto) -> list[ChannelGroup]:
    """Every prunable channel group of ``model`` (weights as initializers, nodes named)."""
    g = _Graph(model)
    groups = []
    for node in model.graph.node:
        if node.op_type != "Conv" or _group_attr(node) != 1 or node.input[1] not in g.inits:
            continue
        weight = g.array(node.input[1])
        assert weight is not None
        group = _trace(g, node, int(weight.shape[0]))
        if group is not None:
            groups.append(group)
    return groups


def _keep_count(channels: int, ratio: float) -> int:
    wanted = channels * (1.0 - ratio)
    rounded = round(wanted / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
    return min(channels, max(CHANNEL_MULTIPLE, rounded)) if channels > CHANNEL_MULTIPLE else channels


def _params(model: onnx.ModelProto) -> int:
    used = {name for node in model.graph.node for name in node.input}
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.name in used)


def _slice_constant(value: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if value.size == 1:
        return value
    shape = value.shape
    flat = value.reshape(-1)[keep]
    sliced: np.ndarray = flat.reshape((*shape[:-3], len(keep), *shape[-2:]) if value.ndim >= 3 else (len(keep),))
    return sliced


def _slice_outputs(g: _Graph, conv: onnx.NodeProto, keep: np.ndarray) -> None:
    """Keep only the ``keep`` output channels of ``conv`` (its filters and biases)."""
    for index in (1, 2):
        if index < len(conv.input) and conv.input[index]:
            value = g.array(conv.input[index])
            assert value is not None
            g.set_array(conv, index, value[keep])


def _apply(g: _Graph, group: ChannelGroup, keep: np.ndarray, refit: set[str]) -> None:
    _slice_outputs(g, g.nodes[group.producer], keep)
    for name in group.members:
        node = g.nodes[name]
        if node.op_type == "BatchNormalization":
            for index in range(1, 5):
                value = g.array(node.input[index])
                assert value is not None
                g.set_array(node, index, value[keep])
        elif node.op_type in ARITHMETIC:
            index = 1 if node.input[1] in g.inits else 0
            value = g.array(node.input[index])
            assert value is not None
            g.set_array(node, index, _slice_constant(value, keep))
        elif node.op_type == "Conv":
            _slice_outputs(g, node, keep)
            for attr in node.attribute:
                if attr.name == "group":
                    attr.i = len(keep)
    for name in group.consumers:
        if name in refit:
            continue
        node = g.nodes[name]
        value = g.array(node.input[1])
        assert value is not None
        g.set_array(node, 1, value[:, keep])


def _importance(g: _Graph, group: ChannelGroup, seen: dict[str, np.ndarray]) -> np.ndarray:
    """Per channel: how much it puts into the consumers. With activations, mean |x_c| times the consumer
    weights reading it; without, the producer's filter norm stands in for the activation."""
    producer = g.array(g.nodes[group.producer].input[1])
    assert producer is not None
    importance = np.zeros(producer.shape[0], dtype=np.float64)
    for name in group.consumers:
        weight = g.array(g.nodes[name].input[1])
        assert weight is not None
        reads = np.abs(weight).sum(axis=(0, *range(2, weight.ndim)))
        x = seen.get(name)
        size = np.abs(x).mean(axis=1) if x is not None else np.abs(producer).reshape(producer.shape[0], -1).sum(1)
        importance += size * reads
    return importance


def _pointwise(g: _Graph, node: onnx.NodeProto) -> tuple[int, int] | None:
    """The strides of an unpadded 1x1 convolution (one whose refit is a linear regression), else None."""
    weight = g.array(node.input[1])
    if weight is None or weight.shape[2:] != (1, 1):
        return None
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    if any(attrs.get("pads", [0])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    strides = attrs.get("strides", [1, 1])
    return int(strides[0]), int(strides[1])


def _run(model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
         ) -> Iterator[dict[str, np.ndarray]]:
    """Per feed, the tensors ``names`` of ``model``."""
    from agent.runtime import OnnxRuntimeEngine

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in dict.fromkeys(names))
    engine = OnnxRuntimeEngine.load(probe.SerializeToString(), threads=ACTIVATION_THREADS)
    try:
        for feed in feeds:
            yield engine.infer(feed)
    finally:
        engine.close()


@dataclass
class _Targets:
    """A consumer's dense outputs at sampled positions, and the positions per frame."""

    values: np.ndarray
    positions: list[tuple[np.ndarray, tuple[int, int]]]


def _dense_targets(g: _Graph, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]],
                   rng: np.random.Generator) -> dict[str, _Targets]:
    outputs = {name: g.nodes[name].output[0] for name in names}
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    positions: dict[str, list[tuple[np.ndarray, tuple[int, int]]]] = defaultdict(list)
    for result in _run(g.model, list(outputs.values()), feeds):
        for name, tensor in outputs.items():
            value = result[tensor][0]
            height, width = value.shape[1:]
            pick = rng.choice(height * width, min(height * width, SAMPLES_PER_FRAME), replace=False)
            parts[name].append(value.reshape(value.shape[0], -1)[:, pick].astype(np.float64))
            positions[name].append((pick, (height, width)))
    return {name: _Targets(np.concatenate(parts[name], axis=1), positions[name]) for name in outputs}


def _inputs_at(g: _Graph, group: ChannelGroup, feeds: Sequence[dict[str, np.ndarray]],
               targets: dict[str, _Targets], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per consumer, its input in the model as pruned so far: at the positions its 1x1 output was sampled
    at (for the refit), else at random positions (for the ranking). Channels x samples."""
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    names = [g.nodes[name].input[0] for name in group.consumers]
    for frame, result in enumerate(_run(g.model, names, feeds)):
        for name in group.consumers:
            node = g.nodes[name]
            x = result[node.input[0]][0]
            strides = _pointwise(g, node)
            if strides is not None and name in targets:
                pick, (height, width) = targets[name].positions[frame]
                x = x[:, :: strides[0], :: strides[1]][:, :height, :width]
            else:
                pick = rng.choice(x.shape[1] * x.shape[2], min(x.shape[1] * x.shape[2], SAMPLES_PER_FRAME),
                                  replace=False)
            columns[name].append(x.reshape(x.shape[0], -1)[:, pick].astype(np.float64))
    return {name: np.concatenate(parts, axis=1) for name, parts in columns.items()}


def _refit(g: _Graph, group: ChannelGroup, keep: np.ndarray, seen: dict[str, np.ndarray],
           targets: dict[str, _Targets]) -> set[str]:
    """Least-squares refit of each 1x1 consumer (weights and bias) so that, from the kept channels of the
    model pruned so far, it reproduces the dense model's output at the sampled positions. Returns the
    consumers refit (their weights now read only the kept channels)."""
    refit: set[str] = set()
    for name in group.consumers:
        node = g.nodes[name]
        if name not in targets or name not in seen or _pointwise(g, node) is None:
            continue
        x, target = seen[name], targets[name].values
        design = np.vstack([x[keep], np.ones((1, x.shape[1]))])
        gram = design @ design.T
        gram += RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram))
        solution = np.linalg.solve(gram, design @ target.T).T
        g.set_array(node, 1, solution[:, :-1, None, None])
        if len(node.input) < 3:
            node.input.append("")
        g.set_array(node, 2, solution[:, -1])
        refit.add(name)
    return refit


def prune_channels(model: onnx.ModelProto, ratio: float, feeds: Sequence[dict[str, np.ndarray]] = (),
                   *, seed: int = 0) -> tuple[onnx.ModelProto, ChannelReport]:
    """A copy of ``model`` with ``ratio`` of the channels of every prunable group removed.

    With ``feeds`` (the model's float inputs on a few frames), groups are pruned one after the other: the
    channels are ranked by what they carry in the model as pruned so far, and each 1x1 consumer is refit
    by least squares to reproduce the dense model's output from the kept channels (so the error of earlier
    groups is made up for downstream too).
    """
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"channel ratio {ratio} is outside (0, 1)")
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    groups = channel_groups(pruned)
    if not groups:
        raise PruneError("no channel group can be pruned: every convolution's channels are tied to another tensor")
    g = _Graph(pruned)
    rng = np.random.default_rng(seed)
    pointwise = [name for group in groups for name in group.consumers if _pointwise(g, g.nodes[name]) is not None]
    targets = _dense_targets(g, pointwise, feeds, rng) if feeds else {}
    done = []
    for group in groups:
        kept = _keep_count(group.channels, ratio)
        seen = _inputs_at(g, group, feeds, targets, rng) if feeds else {}
        keep = np.sort(np.argsort(-_importance(g, group, seen), kind="stable")[:kept])
        _apply(g, group, keep, _refit(g, group, keep, seen, targets) if feeds else set())
        done.append(ChannelGroup(group.producer, group.members, group.consumers, group.channels, kept))
    used = {name for node in pruned.graph.node for name in node.input}
    live = [init for init in pruned.graph.initializer if init.name in used]
    del pruned.graph.initializer[:]
    pruned.graph.initializer.extend(live)
    for value_info in list(pruned.graph.value_info):
        pruned.graph.value_info.remove(value_info)
    return pruned, ChannelReport(ratio, tuple(done), _params(model), _params(pruned))
