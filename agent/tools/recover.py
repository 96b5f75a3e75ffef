"""Recovery after pruning: the pruned model fine-tuned to reproduce the dense teacher's outputs on unlabelled frames.

No labels: the dense model (the teacher) labels every frame, so any footage of
the scene the device sees will do. The pruned ONNX graph becomes a PyTorch
module through onnx2torch (a maintained ONNX -> PyTorch converter; a user with
the original PyTorch model can fine-tune that instead), trains on the teacher's
outputs, and the trained convolution and batch-norm parameters are written
back into the same ONNX graph, so names, opset and dynamic axes stay as they
were and no re-export is needed.

Dense models (a text detector's probability map) train on random square
crops (``crop``), each labelled by the teacher on the crop itself: the model
is fully convolutional, and a 256x256 crop costs a fifth of a 640x480 frame.
The final Sigmoid or Softmax is left out while training, so the loss sees
logits (a pruned model's saturated probabilities would give no gradient).
Batch norms stay in inference mode (their statistics are the dense model's;
small batches would only add noise). Losses: binary cross-entropy on a
probability map, cross-entropy against the teacher's distribution for a
classifier, mean squared error otherwise. Needs torch and onnx2torch.
``agent.tools.prune_recover`` prunes, recovers and keeps the better of the two.
"""

from __future__ import annotations

import importlib
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import structlog
from onnx import numpy_helper

from agent.core import Progress
from agent.tools.distill import check_schedule, teacher_targets
from agent.tools.errors import DistillError
from agent.tools.export import require_torch
from agent.tools.modelref import ModelRef, Runner

__all__ = [
    "RecoverOptions",
    "RecoverResult",
    "load_onnx2torch",
    "logits_graph",
    "recover",
    "to_torch",
    "write_back",
]

log = structlog.get_logger(__name__)

PROBABILITY_EPS = 1e-6
"""Probabilities are clamped away from 0 and 1 before a logarithm."""
DICE_WEIGHT = 1.0
"""Weight of the dice term beside binary cross-entropy in a probability map's loss (DB's own training and
PP-OCR's distillation pair the two)."""
DICE_SMOOTH = 1.0
"""Added to both sides of the dice ratio: a crop with no text gives no division by zero."""
CROPS_PER_FRAME = 4
"""Crops taken from each training frame of a dense model (each labelled by the teacher on its own)."""
CROP_CANDIDATES = 12
"""Random crops per frame the kept ones are chosen from (the teacher runs on each: 256x256 is cheap)."""
TRAINED_OPS = frozenset({"Conv", "ConvTranspose", "BatchNormalization", "Gemm"})
"""Operators whose parameters onnx2torch makes trainable and ``write_back`` copies into the graph."""

PROGRESS_STAGE = "recover"
"""The stage the steps are reported under: ``progress("recover", step, steps, note="loss ...")``."""


@dataclass(frozen=True)
class RecoverOptions:
    """How a pruned model is fine-tuned: ``steps`` batches, Adam with a cosine-annealed learning rate."""

    steps: int = 200
    batch_size: int = 4
    learning_rate: float = 3e-4
    crop: int | None = 256
    """Side of the square crops dense models train on (a multiple of 32); None trains on whole frames."""
    rotate: bool = False
    """Also show each frame turned by 90, 180 and 270 degrees (for an orientation classifier)."""
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        check_schedule("steps", self.steps, self.batch_size, self.learning_rate)
        if self.crop is not None and (self.crop < 32 or self.crop % 32):
            raise DistillError(f"crop {self.crop} must be a multiple of 32")


@dataclass(frozen=True)
class RecoverResult:
    """The fine-tuned graph, the loss of every step, the training pairs it saw and how long it took."""

    model: onnx.ModelProto
    losses: tuple[float, ...]
    samples: int
    seconds: float


def load_onnx2torch() -> Any:
    """onnx2torch, importable without torchvision: it imports ``torchvision.ops`` for RoiAlign and NMS only,
    and PyPI's torchvision does not load beside the CPU torch wheel. A stand-in that refuses those two
    operators is put in its place when torchvision is missing."""
    require_torch()
    try:
        importlib.import_module("torchvision.ops")
    except Exception:  # missing, or the wheel that does not load beside the CPU torch
        def unavailable(*_: Any, **__: Any) -> Any:
            raise DistillError("this model needs torchvision (RoiAlign or NonMaxSuppression)")

        vision = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.roi_align = ops.nms = ops.batched_nms = unavailable  # type: ignore[attr-defined]  # a stand-in module
        vision.ops = ops  # type: ignore[attr-defined]  # a stand-in torchvision
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = vision, ops
    try:
        return importlib.import_module("onnx2torch")
    except ModuleNotFoundError as exc:
        raise DistillError("onnx2torch is not installed: pip install 'edge-agent[torch]'") from exc


def _module_name(node: onnx.NodeProto) -> str:
    return node.name.replace(".", "/")


def to_torch(model: onnx.ModelProto) -> Any:
    """``model`` (nodes named) as a PyTorch module, in inference mode, every parameter trainable."""
    if any(not node.name for node in model.graph.node):
        raise DistillError("every node needs a name to map the trained parameters back")
    try:
        module = load_onnx2torch().convert(model)
    except DistillError:
        raise
    except Exception as exc:  # the converter raises NotImplementedError and friends for unknown operators
        raise DistillError(f"onnx2torch cannot convert the model: {type(exc).__name__}: {exc}") from exc
    return module.eval()


def write_back(model: onnx.ModelProto, module: Any) -> onnx.ModelProto:
    """A copy of ``model`` whose convolution, Gemm and batch-norm parameters are ``module``'s."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    modules = dict(module.named_modules())
    inits = {init.name: init for init in result.graph.initializer}
    uses: dict[str, int] = {}
    for node in result.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in result.graph.node:
        if node.op_type not in TRAINED_OPS:
            continue
        trained = modules.get(_module_name(node))
        if trained is None:
            raise DistillError(f"node {node.name}: no module of that name in the converted model")
        slots = {1: "weight", 2: "bias"}
        for index, attribute in slots.items():
            if index >= len(node.input) or not node.input[index] or node.input[index] not in inits:
                continue
            tensor = getattr(trained, attribute, None)
            if tensor is None:
                continue
            if uses[node.input[index]] > 1:
                raise DistillError(f"initializer {node.input[index]} is shared between nodes: cannot write it back")
            value = tensor.detach().cpu().numpy().astype(np.float32)
            init = inits[node.input[index]]
            if node.op_type == "Gemm" and tuple(init.dims) != value.shape:
                value = value.T
            init.CopyFrom(numpy_helper.from_array(value.reshape(tuple(init.dims)), init.name))
    return result


def _crops(teacher: ModelRef, frames: Sequence[np.ndarray], size: int, count: int, threads: int,
           rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input crop, the teacher's output on that crop): ``count`` square crops of each frame's float tensor.

    The teacher sees the crop itself, not the whole frame: a model with global pooling (the
    squeeze-excitation of PP-OCR's neck) answers a crop differently from the same window of a frame.
    Of ``CROP_CANDIDATES`` random crops, those where the teacher's output is largest are kept, and one
    at random: most of a scene is background, which a random crop mostly shows and teaches little.
    """
    runner = Runner(teacher, threads=threads, fused=False)
    pairs = []
    try:
        for frame in frames:
            feeds, _ = runner.prep(frame)
            name, tensor = next(iter(feeds.items()))
            height, width = tensor.shape[-2:]
            if height < size or width < size:
                continue
            candidates = []
            for _ in range(max(count, CROP_CANDIDATES)):
                top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
                crop = np.ascontiguousarray(tensor[..., top:top + size, left:left + size])
                outputs, _ = runner.infer({name: crop})
                candidates.append((crop[0], outputs[runner.output_name][0]))
            order = sorted(range(len(candidates)), key=lambda i: -float(np.abs(candidates[i][1]).mean()))
            chosen = [*order[: count - 1], order[int(rng.integers(count - 1, len(order)))]]
            pairs += [candidates[i] for i in chosen]
    finally:
        runner.close()
    return pairs


def logits_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """``model`` without a final Sigmoid or Softmax (training on logits keeps gradients alive where a pruned
    model's probabilities saturate), and which of the two it was (None: the graph is returned as it is)."""
    if len(model.graph.output) != 1:
        return model, None
    output = model.graph.output[0].name
    last = next((node for node in model.graph.node if output in node.output), None)
    if last is None or last.op_type not in ("Sigmoid", "Softmax"):
        return model, None
    trimmed = onnx.ModelProto()
    trimmed.CopyFrom(model)
    kept = [node for node in trimmed.graph.node if node.name != last.name]
    del trimmed.graph.node[:]
    trimmed.graph.node.extend(kept)
    trimmed.graph.output[0].name = last.input[0]
    return trimmed, last.op_type


def _loss(kind: str, ending: str | None, logits: bool) -> Callable[[Any, Any], Any]:
    torch = require_torch()
    functional = torch.nn.functional

    def probability_map(out: Any, target: Any) -> Any:
        target = target.clamp(0, 1)
        if ending == "Sigmoid":
            bce = functional.binary_cross_entropy_with_logits(out, target)
            probability = torch.sigmoid(out)
        else:
            probability = out.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
            bce = functional.binary_cross_entropy(probability, target)
        # Dice on the teacher's map: every text region weighs alike, however little of the crop it covers
        # (BCE alone is ruled by the background, which is most of every crop).
        overlap = (probability * target).sum(dim=(1, 2, 3))
        mass = (probability * probability).sum(dim=(1, 2, 3)) + (target * target).sum(dim=(1, 2, 3))
        dice = 1.0 - (2.0 * overlap + DICE_SMOOTH) / (mass + DICE_SMOOTH)
        return bce + DICE_WEIGHT * dice.mean()

    def classify(out: Any, target: Any) -> Any:
        if logits or ending == "Softmax":
            log_p = functional.log_softmax(out, dim=1)
        else:
            log_p = out.clamp_min(PROBABILITY_EPS).log()
        return -(target * log_p).sum(dim=1).mean()

    if kind == "text_detect_db":
        return probability_map
    if kind == "classify":
        return classify
    chosen: Callable[[Any, Any], Any] = functional.mse_loss
    return chosen


def recover(teacher: ModelRef, student: onnx.ModelProto, frames: Sequence[np.ndarray], options: RecoverOptions,
            *, progress: Progress | None = None, keep_zeros: bool = False) -> RecoverResult:
    """Fine-tune ``student`` (an ONNX graph taking the teacher's float input) on ``teacher``'s outputs.

    ``keep_zeros``: weights that are zero stay zero (the mask of unstructured or 2:4 pruning).
    """
    if not frames:
        raise DistillError("no frames to recover on")
    torch = require_torch()
    started = time.monotonic()
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    dense = teacher.manifest.head.kind == "text_detect_db" or teacher.manifest.preprocess.height is None
    pairs = (_crops(teacher, frames, options.crop, CROPS_PER_FRAME, options.threads, rng)
             if options.crop is not None and dense else [])
    pairs = pairs or teacher_targets(teacher, frames, options.rotate, options.threads)
    trainable, ending = logits_graph(student)
    module = to_torch(trainable)
    head = teacher.manifest.head
    loss_fn = _loss(head.kind, ending, logits=head.kind == "classify" and head.softmax)
    parameters = [p for p in module.parameters() if p.requires_grad]
    masks = [(p, p.detach() != 0) for p in parameters if p.ndim > 1] if keep_zeros else []
    optimizer = torch.optim.Adam(parameters, lr=options.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.steps)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, (tensor, _) in enumerate(pairs):
        by_shape.setdefault(tensor.shape, []).append(index)
    shapes = list(by_shape)
    losses = []
    for step in range(options.steps):
        indices = by_shape[shapes[int(rng.integers(len(shapes)))]]
        batch = [pairs[int(i)] for i in rng.choice(indices, options.batch_size)]
        inputs = torch.from_numpy(np.stack([b[0] for b in batch]))
        targets = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss = loss_fn(module(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for parameter, mask in masks:
                parameter.mul_(mask)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(PROGRESS_STAGE, step + 1, options.steps, note=f"loss {losses[-1]:.4f}")
    module.eval()
    seconds = time.monotonic() - started
    log.info("recovered", steps=options.steps, samples=len(pairs), first_loss=round(losses[0], 5),
             last_loss=round(losses[-1], 5), seconds=round(seconds, 1))
    return RecoverResult(write_back(student, module), tuple(losses), len(pairs), seconds)
