"""ONNX graph surgery and the fit between a manifest and a model's tensors.

``fuse_preprocessing`` moves a model's normalisation into its graph: the fused
model takes the camera frame as it comes (uint8, NHWC, BGR) and does the cast,
transpose, colour flip and scale/mean/std itself, inside the inference runtime.
On a Jetson that work then runs on the GPU under TensorRT instead of the CPU,
and a quarter of the bytes (uint8, not float32) cross to the device. The
agent's preprocessor then only resizes.

``check_fits_input`` and ``check_fits_head`` tell, before a model serves, whether
its manifest can feed it and read it: the deployment validator calls them on
the loaded engine's tensors and fails the deployment with their message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.models.errors import ModelError
from agent.models.manifest import HeadSpec, PreprocessSpec
from agent.runtime import TensorSpec

__all__ = [
    "BOX_COORDS",
    "FUSED_METADATA_KEY",
    "FUSED_PREFIX",
    "MIN_FUSE_OPSET",
    "SpecMismatchError",
    "check_fits_head",
    "check_fits_input",
    "fuse_preprocessing",
]

FUSED_PREFIX = "edge_agent_preprocess"
FUSED_METADATA_KEY = "edge_agent.fused_preprocess"
MIN_FUSE_OPSET = 7
"""Cast with a ``to`` attribute and broadcasting Mul/Add exist from opset 7 on."""
BOX_COORDS = 4
IMAGE_RANK = 4
CTC_RANK = 3
"""A CTC recognizer's output: [N, steps, classes]."""
CHANNELS = 3
BGR_TO_RGB = (2, 1, 0)
NHWC_TO_NCHW = (0, 3, 1, 2)
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16})


class SpecMismatchError(ModelError, ValueError):
    """A manifest's preprocess or head does not fit the model's inputs or outputs."""


def _dims(spec: TensorSpec) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in spec.shape) + "]"


def _pick(tensors: Sequence[TensorSpec], name: str | None, what: str) -> TensorSpec:
    if not tensors:
        raise SpecMismatchError(f"the model has no {what}s")
    if name is None:
        if what == "input" and len(tensors) > 1:
            names = [t.name for t in tensors]
            raise SpecMismatchError(
                f"the model has {len(tensors)} inputs {names}: set preprocess.input_name"
            )
        return tensors[0]
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    names = [t.name for t in tensors]
    raise SpecMismatchError(f"{what} {name!r} not in the model's {what}s {names}")


def check_fits_input(spec: PreprocessSpec, inputs: Sequence[TensorSpec]) -> TensorSpec:
    """The image input the manifest feeds; raise SpecMismatchError when it cannot.

    A float32 input takes the tensor in ``spec.layout``; a uint8 input is a fused
    graph (see ``fuse_preprocessing``) and takes the frame as NHWC.
    """
    tensor = _pick(inputs, spec.input_name, "input")
    where = f"input {tensor.name!r} {_dims(tensor)}"
    if len(tensor.shape) != IMAGE_RANK:
        raise SpecMismatchError(f"{where}: rank {len(tensor.shape)}, an image input needs rank 4")
    fused = tensor.dtype == np.uint8
    if not fused and tensor.dtype != np.float32:
        raise SpecMismatchError(
            f"{where}: dtype {tensor.dtype}, needs float32 (or uint8 when fused)"
        )
    layout = "NHWC" if fused else spec.layout
    batch, *rest = tensor.shape
    if batch not in (None, 1):
        raise SpecMismatchError(f"{where}: batch {batch}, frames are fed one at a time (batch 1)")
    channels = rest[0] if layout == "NCHW" else rest[2]
    if channels not in (None, CHANNELS):
        hint = " (a uint8 input is a fused graph and must be NHWC)" if fused else ""
        raise SpecMismatchError(f"{where}: {layout} channels {channels}, needs 3{hint}")
    height, width = (tensor.shape[axis] for axis in image_axes(spec, tensor))
    for key, want, got in (("height", spec.height, height), ("width", spec.width, width)):
        if want is not None and got is not None and want != got:
            raise SpecMismatchError(
                f"{where}: preprocess.{key} {want} but the model's {key} is {got}"
            )
    fixed = (spec.height or height, spec.width or width)
    if spec.resize != "multiple" and None in fixed:
        raise SpecMismatchError(
            f"{where}: dynamic height/width: resize={spec.resize!r} needs "
            "preprocess.height and preprocess.width"
        )
    return tensor


def image_axes(spec: PreprocessSpec, tensor: TensorSpec) -> tuple[int, int]:
    """The (height, width) axes of an image input: a uint8 input is a fused graph, fed NHWC frames;
    a float32 one takes the tensor in ``spec.layout``."""
    layout = "NHWC" if tensor.dtype == np.uint8 else spec.layout
    return (2, 3) if layout == "NCHW" else (1, 2)


def check_fits_head(outputs: Sequence[TensorSpec], head: HeadSpec) -> TensorSpec:
    """The output the head reads; raise SpecMismatchError when its layout does not fit."""
    tensor = _pick(outputs, head.output_name, "output")
    where = f"output {tensor.name!r} {_dims(tensor)}"
    shape = tensor.shape
    n_labels = len(head.labels)
    if head.kind == "classify":
        if len(shape) != 2:
            raise SpecMismatchError(f"{where}: a classifier needs [N, classes]")
        if n_labels and shape[1] is not None and shape[1] != n_labels:
            raise SpecMismatchError(f"{where}: {shape[1]} classes but {n_labels} labels")
    elif head.kind == "detect_yolo":
        if len(shape) != 3:
            raise SpecMismatchError(f"{where}: detect_yolo needs [N, 4+classes, anchors]")
        if n_labels and None not in shape[1:] and BOX_COORDS + n_labels not in shape[1:]:
            raise SpecMismatchError(
                f"{where}: {n_labels} labels need an axis of 4+{n_labels}={BOX_COORDS + n_labels}"
            )
        static = [d for d in shape[1:] if d is not None]
        if len(static) == 2 and max(static) <= BOX_COORDS:
            raise SpecMismatchError(f"{where}: no axis holds 4 box values plus class scores")
    elif head.kind == "ctc":
        if len(shape) != CTC_RANK:
            raise SpecMismatchError(f"{where}: a ctc recognizer needs [N, steps, classes]")
    elif len(shape) != IMAGE_RANK or shape[1] not in (None, 1):
        raise SpecMismatchError(f"{where}: text_detect_db needs a probability map [N, 1, H, W]")
    return tensor


def _image_input(model: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ValueInfoProto:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    wanted = spec.input_name
    candidates = [vi for vi in inputs if wanted is None or vi.name == wanted]
    if len(candidates) != 1:
        names = [vi.name for vi in inputs]
        what = f"input {wanted!r} not found" if wanted else f"{len(names)} inputs, set input_name"
        raise SpecMismatchError(f"cannot fuse preprocessing: {what} (inputs {names})")
    image: onnx.ValueInfoProto = candidates[0]
    tensor_type = image.type.tensor_type
    if tensor_type.elem_type not in _FLOAT_TYPES:
        dtype = TensorProto.DataType.Name(tensor_type.elem_type)
        raise SpecMismatchError(f"cannot fuse preprocessing: input {image.name!r} is {dtype}")
    dims = tensor_type.shape.dim
    channel = None if len(dims) != IMAGE_RANK else dims[1 if spec.layout == "NCHW" else 3]
    if channel is None or (channel.HasField("dim_value") and channel.dim_value != CHANNELS):
        raise SpecMismatchError(
            f"cannot fuse preprocessing: input {image.name!r} is not a 3-channel "
            f"{spec.layout} image"
        )
    return image


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise SpecMismatchError("cannot fuse preprocessing: the model imports no default ONNX opset")


def _frame_input(name: str, original: onnx.ValueInfoProto, layout: str) -> onnx.ValueInfoProto:
    dims = original.type.tensor_type.shape.dim
    height, width = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])

    def dim(d: onnx.TensorShapeProto.Dimension, fallback: str) -> int | str:
        if d.HasField("dim_value"):
            return int(d.dim_value)
        return d.dim_param or fallback

    shape = [1, dim(height, "height"), dim(width, "width"), CHANNELS]
    return helper.make_tensor_value_info(name, TensorProto.UINT8, shape)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every consumer of ``old`` (subgraphs too: they may read outer names) at ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_uses(sub, old, new)


def _names(graph: onnx.GraphProto) -> set[str]:
    taken = {n for node in graph.node for n in (*node.input, *node.output, node.name)}
    taken |= {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
    return taken | {init.name for init in graph.initializer}


def _fresh(taken: set[str], base: str) -> str:
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name


def _preprocess_nodes(
    spec: PreprocessSpec, frame: str, out: str, elem_type: int, taken: set[str]
) -> list[onnx.NodeProto]:
    """frame uint8 NHWC BGR -> Cast -> (Transpose) -> (Gather RGB) -> Mul -> Add -> out.

    The Cast comes first because TensorRT takes a uint8 input only when it feeds a
    Cast directly. The Transpose comes before the channel flip so that the flip
    gathers whole planes, which ONNX Runtime does several times faster than
    gathering every third value of an interleaved image.
    """
    nchw = spec.layout == "NCHW"
    channel_axis = 1 if nchw else 3
    const_shape = (1, CHANNELS, 1, 1) if nchw else (CHANNELS,)
    std = np.asarray(spec.std, dtype=np.float64)
    gain = (spec.scale / std).astype(np.float32).reshape(const_shape)
    bias = (-np.asarray(spec.mean, dtype=np.float64) / std).astype(np.float32).reshape(const_shape)
    steps: list[tuple[str, dict[str, Any], np.ndarray | None]] = [
        ("Cast", {"to": TensorProto.FLOAT}, None)
    ]
    if nchw:
        steps.append(("Transpose", {"perm": list(NHWC_TO_NCHW)}, None))
    if spec.color == "rgb":
        flip = np.asarray(BGR_TO_RGB, dtype=np.int64)
        steps.append(("Gather", {"axis": channel_axis}, flip))
    steps += [("Mul", {}, gain), ("Add", {}, bias)]
    if elem_type != TensorProto.FLOAT:
        steps.append(("Cast", {"to": elem_type}, None))
    nodes: list[onnx.NodeProto] = []
    current = frame
    for index, (op, attrs, const) in enumerate(steps):
        inputs = [current]
        if const is not None:
            const_name = _fresh(taken, f"{FUSED_PREFIX}/{op.lower()}_const")
            value = numpy_helper.from_array(const, const_name)
            constant = helper.make_node("Constant", [], [const_name], name=const_name, value=value)
            nodes.append(constant)
            inputs.append(const_name)
        last = index == len(steps) - 1
        current = out if last else _fresh(taken, f"{FUSED_PREFIX}/{op.lower()}")
        nodes.append(helper.make_node(op, inputs, [current], name=current, **attrs))
    return nodes


def fuse_preprocessing(model: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ModelProto:
    """A copy of ``model`` whose image input is the raw frame: uint8 [1, H, W, 3] in BGR order.

    The input keeps its name; the graph's own nodes, outputs, opset and IR version
    are unchanged. H and W stay dynamic where the original's are. Raise
    SpecMismatchError when the model has no float image input that fits ``spec``
    or an opset older than ``MIN_FUSE_OPSET``.
    """
    image = _image_input(model, spec)
    opset = _opset(model)
    if opset < MIN_FUSE_OPSET:
        raise SpecMismatchError(f"cannot fuse preprocessing: opset {opset} < {MIN_FUSE_OPSET}")
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = fused.graph
    name = image.name
    taken = _names(graph)
    internal = _fresh(taken, f"{FUSED_PREFIX}/{name}")
    _rename_uses(graph, name, internal)
    nodes = _preprocess_nodes(spec, name, internal, image.type.tensor_type.elem_type, taken)
    original_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + original_nodes)
    position = next(i for i, vi in enumerate(graph.input) if vi.name == name)
    graph.input[position].CopyFrom(_frame_input(name, image, spec.layout))
    recorded = spec.model_dump(mode="json", include={"color", "scale", "mean", "std", "layout"})
    props = {p.key: p.value for p in fused.metadata_props}
    helper.set_model_props(fused, {**props, FUSED_METADATA_KEY: json.dumps(recorded)})
    try:
        onnx.checker.check_model(fused)
    except onnx.checker.ValidationError as exc:
        raise SpecMismatchError(f"the fused model fails the ONNX checker: {exc}") from exc
    return fused
