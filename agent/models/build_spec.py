"""What an engine build is asked for, checked against the model before TensorRT is touched.

Pure functions only: the build spec and its validation, the model's own precision
(explicit Q/DQ int8, fp16 weights, or fp32), the precision plan for a given
TensorRT (which network flag, which builder flags), and the optimization profile
of every dynamic input. The TensorRT calls live in :mod:`agent.models.build`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import onnx

from agent.core import one_of
from agent.models.errors import ModelError
from agent.runtime import ShapeProfile

__all__ = [
    "DEFAULT_WORKSPACE_MB",
    "BuildSpec",
    "BuildSpecError",
    "PrecisionPlan",
    "model_inputs",
    "model_precision",
    "parse_precision",
    "parse_shape",
    "plan_precision",
    "profile_text",
    "resolve_profiles",
    "target_precision",
]

Precision = Literal["auto", "fp32", "fp16", "int8"]
Sparse = Literal["auto", "on", "off"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
SPARSE_CHOICES: tuple[Sparse, ...] = get_args(Sparse)
DEFAULT_WORKSPACE_MB = 1024
MAX_WORKSPACE_MB = 1 << 20
DEFAULT_BUILD_TIMEOUT_S = 3600.0
"""An engine build on a Jetson takes minutes; an hour means it is stuck."""
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
FLOAT16 = onnx.TensorProto.FLOAT16


class BuildSpecError(ModelError, ValueError):
    """A build request does not fit the model or this TensorRT (names what and why)."""


@dataclass(frozen=True)
class BuildSpec:
    """How to build: precision, shape profiles of dynamic inputs, workspace, sparsity, DLA."""

    precision: Precision = "auto"
    shapes: Mapping[str, ShapeProfile] = field(default_factory=dict)
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    sparse: Sparse = "auto"
    dla_core: int | None = None
    version_compatible: bool = False
    """Build for the lean runtime too (VERSION_COMPATIBLE, lean runtime excluded from the plan)."""
    timeout_s: float = DEFAULT_BUILD_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BuildSpecError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.sparse not in SPARSE_CHOICES:
            raise BuildSpecError(f"sparse {self.sparse!r} is not one of {SPARSE_CHOICES}")
        if not 1 <= self.workspace_mb <= MAX_WORKSPACE_MB:
            raise BuildSpecError(f"workspace_mb {self.workspace_mb} must be 1..{MAX_WORKSPACE_MB}")
        if self.dla_core is not None and self.dla_core < 0:
            raise BuildSpecError(f"dla_core {self.dla_core} must be 0 or more")
        if self.timeout_s <= 0:
            raise BuildSpecError(f"timeout_s {self.timeout_s} must be positive")
        object.__setattr__(self, "shapes", dict(self.shapes))


def parse_precision(text: str) -> Precision:
    """``text`` (a config value, a flag) as a build precision; BuildSpecError when it is none."""
    precision = one_of(text, PRECISIONS)
    if precision is None:
        raise BuildSpecError(f"precision {text!r} is not one of {PRECISIONS}")
    return precision


def _is_dims(text: str) -> bool:
    return all(part.isdigit() for part in text.split("x"))


def parse_shape(text: str) -> tuple[str, ShapeProfile]:
    """``x:1x3x32x32:1x3x480x640:1x3x1536x1536`` (min:opt:max) or ``x:1x3x224x224`` (fixed).

    The name may itself hold ':' (``input:0``); the shapes are the trailing fields.
    """
    ranged = text.rsplit(":", 3)
    fixed = text.rsplit(":", 1)
    if len(ranged) == 4 and ranged[0] and all(_is_dims(p) for p in ranged[1:]):
        name, parts = ranged[0], ranged[1:]
    elif len(fixed) == 2 and fixed[0] and _is_dims(fixed[1]):
        name, parts = fixed[0], fixed[1:] * 3
    else:
        raise BuildSpecError(f"shape {text!r}: write NAME:MIN:OPT:MAX or NAME:SHAPE, "
                             "each shape as integer dims joined by 'x' (1x3x480x640)")
    low, mid, high = (tuple(int(d) for d in part.split("x")) for part in parts)
    try:
        return name, ShapeProfile(low, mid, high)
    except ValueError as exc:
        raise BuildSpecError(f"shape {text!r}: {exc}") from exc


def model_inputs(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """The graph's real inputs (initializers excluded), ``None`` for dynamic dims."""
    weights = {init.name for init in model.graph.initializer}
    return {
        item.name: tuple(
            dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
            for dim in item.type.tensor_type.shape.dim
        )
        for item in model.graph.input
        if item.name not in weights
    }


def model_precision(model: onnx.ModelProto) -> Literal["fp32", "fp16", "int8"]:
    """The precision the model carries: Q/DQ nodes make it int8, fp16 weights or inputs fp16."""
    if any(node.op_type in QDQ_OPS for node in model.graph.node):
        return "int8"
    typed = [init.data_type for init in model.graph.initializer]
    typed += [item.type.tensor_type.elem_type for item in model.graph.input]
    return "fp16" if FLOAT16 in typed else "fp32"


def target_precision(requested: Precision, carried: str) -> str:
    """The precision the engine will compute in; a request that contradicts the model is refused."""
    if requested in ("auto", carried):
        return carried
    if carried == "int8" or carried == "fp16":
        raise BuildSpecError(f"the model carries explicit {carried} precision; build it with "
                             f"precision auto or {carried}, not {requested}")
    if requested == "int8":
        raise BuildSpecError("int8 needs an explicitly quantized ONNX model (QuantizeLinear/"
                             "DequantizeLinear nodes); TensorRT 10/11 build int8 from Q/DQ "
                             "without a calibrator. This model has none: quantize it first")
    return requested


@dataclass(frozen=True)
class PrecisionPlan:
    """How to ask TensorRT for a precision: network typing and builder flag names."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]


def plan_precision(target: str, carried: str, *, has_strongly_typed: bool,
                   has_fp16_flag: bool, tensorrt_version: str) -> PrecisionPlan:
    """Strongly typed networks wherever TensorRT has them, except fp16 from an fp32 model.

    An fp32 model built as fp16 needs the FP16 builder flag on a weakly typed network
    (TensorRT 10). TensorRT 11 removed that flag: the model must carry fp16 itself.
    """
    if target == "fp16" and carried == "fp32":
        if not has_fp16_flag:
            raise BuildSpecError(
                f"TensorRT {tensorrt_version} has no FP16 builder flag (removed in TensorRT 11): "
                "convert the model to fp16 first; strongly typed networks keep the model's types"
            )
        return PrecisionPlan(target, False, ("FP16",))
    if has_strongly_typed:
        return PrecisionPlan(target, True, ())
    legacy = {"int8": ("INT8",), "fp16": ("FP16",)}.get(target, ())
    return PrecisionPlan(target, False, legacy)


def resolve_profiles(inputs: Mapping[str, tuple[int | None, ...]],
                     shapes: Mapping[str, ShapeProfile]) -> dict[str, ShapeProfile]:
    """The optimization profile of every dynamic input, checked against the model.

    An input whose only dynamic dim is the batch (dim 0) defaults to batch 1; any
    other dynamic input must be given min/opt/max.
    """
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise BuildSpecError(f"shapes given for {unknown}, which are not inputs of the model "
                             f"(inputs: {sorted(inputs)})")
    profiles = {}
    for name, dims in inputs.items():
        given = shapes.get(name)
        dynamic = [axis for axis, dim in enumerate(dims) if dim is None]
        if given is None:
            if not dynamic:
                continue
            if dynamic != [0]:
                raise BuildSpecError(f"input {name!r} has dynamic dims {dynamic} of {_text(dims)}: "
                                     f"give its range as {name}:MIN:OPT:MAX")
            # Only dim 0 is dynamic (checked above), so the rest are all fixed ints.
            fixed = (1, *(dim for dim in dims[1:] if dim is not None))
            given = ShapeProfile(fixed, fixed, fixed)
        _check_fits(name, dims, given)
        if dynamic:
            profiles[name] = given
    return profiles


def _check_fits(name: str, dims: tuple[int | None, ...], given: ShapeProfile) -> None:
    if len(given.min) != len(dims):
        raise BuildSpecError(f"input {name!r}: profile rank {len(given.min)}, the model's input "
                             f"is {_text(dims)}")
    for axis, dim in enumerate(dims):
        if dim is not None and {given.min[axis], given.opt[axis], given.max[axis]} != {dim}:
            raise BuildSpecError(f"input {name!r}: dim {axis} is fixed at {dim} in the model, "
                                 f"the profile says {given.min[axis]}..{given.max[axis]}")
        if dim is None and given.min[axis] < 1:
            raise BuildSpecError(f"input {name!r}: dim {axis} minimum must be at least 1")


def _text(dims: tuple[int | None, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def profile_text(profiles: Mapping[str, ShapeProfile]) -> str:
    """A canonical one-line form of the profiles, for the engine key (``static`` if none)."""
    if not profiles:
        return "static"

    def dims(shape: tuple[int, ...]) -> str:
        return "x".join(str(d) for d in shape)

    return ";".join(
        f"{name}={dims(p.min)}/{dims(p.opt)}/{dims(p.max)}" for name, p in sorted(profiles.items())
    )
