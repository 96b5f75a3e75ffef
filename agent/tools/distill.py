"""Knowledge distillation: a small student learns the teacher's outputs on unlabelled frames.

No labels are needed: the teacher (an ONNX model with its manifest) labels every
frame the student sees, so augmentation is free; each frame is also shown
turned by 90, 180 and 270 degrees, which for an orientation classifier is what
makes the other three classes appear at all. Inputs are the agent's float
preprocessing of the teacher's manifest, so the student takes the same tensor
and reuses the teacher's manifest.

Losses: a classifier learns the teacher's class distribution (cross-entropy
against the teacher's probabilities softened by a temperature); a text
detector learns the probability map (binary cross-entropy on the student's
logits); anything else learns the raw outputs (mean squared error). The student
outputs logits; the exported graph ends like the teacher's (a softmax when the
teacher's head reads probabilities, a sigmoid for a probability map).

Needs the optional ``torch`` extra.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog

from agent.core import Progress
from agent.tools.channels import ChannelReport
from agent.tools.compare import Comparison, compare_models
from agent.tools.errors import DistillError
from agent.tools.export import export_onnx, require_torch
from agent.tools.modelref import ModelRef, Runner
from agent.vision import softmax

__all__ = ["DistillOptions", "DistillResult", "check_schedule", "compare_student", "distill", "teacher_targets",
           "views"]

log = structlog.get_logger(__name__)

ROTATIONS = (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)

PROGRESS_STAGE = "train"
"""The stage the epochs are reported under: ``progress("train", epoch, epochs, note="loss ...")``."""


def check_schedule(unit: str, count: int, batch_size: int, learning_rate: float) -> None:
    """Refuse a training schedule that cannot run; ``unit`` names what ``count`` counts (epochs, steps)."""
    if count < 1 or batch_size < 1:
        raise DistillError(f"{unit} ({count}) and batch size ({batch_size}) must be >= 1")
    if not learning_rate > 0:
        raise DistillError("the learning rate must be > 0")


@dataclass(frozen=True)
class DistillOptions:
    """How a student is trained: whole passes over the frame views, Adam at a fixed learning rate."""

    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    temperature: float = 1.0
    """Softens the teacher's class distribution (and the student's) before the cross-entropy."""
    rotate: bool = True
    """Also show each frame turned by 90, 180 and 270 degrees."""
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        check_schedule("epochs", self.epochs, self.batch_size, self.learning_rate)
        if not self.temperature > 0:
            raise DistillError("the temperature must be > 0")


@dataclass(frozen=True)
class DistillResult:
    """The exported student, its training losses and, with evaluation frames, its comparison with the teacher."""

    path: Path
    losses: tuple[float, ...]
    """Mean training loss per epoch."""
    samples: int
    comparison: Comparison | None
    """The student against the teacher on the held-out frame views (turned too, when rotating)."""
    pruning: ChannelReport | None = None
    """For a student made from the teacher's own graph: the channels it kept."""
    start: Comparison | None = None
    """For a student made from the teacher's own graph: that graph pruned and refit, before distillation,
    on the same views."""


def views(frame: np.ndarray, rotate: bool) -> list[np.ndarray]:
    """``frame``, and with ``rotate`` also turned by 90, 180 and 270 degrees."""
    if not rotate:
        return [frame]
    return [frame if code is None else cv2.rotate(frame, code) for code in ROTATIONS]


def teacher_targets(teacher: ModelRef, frames: Sequence[np.ndarray], rotate: bool,
                    threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input tensor, teacher target) per frame view; targets are probabilities or raw outputs."""
    runner = Runner(teacher, threads=threads, fused=False)
    head = teacher.manifest.head
    pairs = []
    try:
        for frame in frames:
            for view in views(frame, rotate):
                feeds, _ = runner.prep(view)
                outputs, _ = runner.infer(feeds)
                target = outputs[runner.output_name]
                if head.kind == "classify" and head.softmax:
                    target = softmax(target).astype(np.float32)
                pairs.append((next(iter(feeds.values()))[0], target[0]))
    finally:
        runner.close()
    return pairs


def _loss(kind: str, temperature: float) -> Callable[[Any, Any], Any]:
    torch = require_torch()
    functional = torch.nn.functional

    def classify(logits: Any, probs: Any) -> Any:
        soft = probs.clamp_min(1e-8) ** (1.0 / temperature)
        soft = soft / soft.sum(dim=1, keepdim=True)
        log_p = functional.log_softmax(logits / temperature, dim=1)
        return -(soft * log_p).sum(dim=1).mean() * temperature**2

    def dense(logits: Any, probs: Any) -> Any:
        return functional.binary_cross_entropy_with_logits(logits, probs)

    losses: dict[str, Callable[[Any, Any], Any]] = {"classify": classify, "text_detect_db": dense}
    chosen: Callable[[Any, Any], Any] = losses.get(kind, functional.mse_loss)
    return chosen


def _batches(pairs: list[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled index batches, each of one input shape (rotated frames change a dense input's shape)."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, (tensor, _) in enumerate(pairs):
        by_shape[tensor.shape].append(index)
    batches = []
    for indices in by_shape.values():
        order = rng.permutation(indices).tolist()
        batches += [order[i:i + size] for i in range(0, len(order), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _train(student: Any, pairs: list[tuple[np.ndarray, np.ndarray]], kind: str, options: DistillOptions,
           progress: Progress | None) -> list[float]:
    torch = require_torch()
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    loss_fn = _loss(kind, options.temperature)
    optimizer = torch.optim.Adam(student.parameters(), lr=options.learning_rate)
    losses = []
    student.train()
    for epoch in range(options.epochs):
        total, count = 0.0, 0
        for batch in _batches(pairs, options.batch_size, rng):
            inputs = torch.from_numpy(np.stack([pairs[i][0] for i in batch]))
            targets = torch.from_numpy(np.stack([pairs[i][1] for i in batch]))
            outputs = student(inputs)
            if outputs.shape != targets.shape:
                raise DistillError(f"the student outputs {tuple(outputs.shape[1:])} per frame, the teacher "
                                   f"{tuple(targets.shape[1:])}: they must match")
            loss = loss_fn(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        losses.append(total / count)
        log.info("distill_epoch", epoch=epoch + 1, epochs=options.epochs, loss=round(losses[-1], 5))
        if progress is not None:
            progress(PROGRESS_STAGE, epoch + 1, options.epochs, note=f"loss {losses[-1]:.4f}")
    return losses


def _exportable(student: Any, teacher: ModelRef) -> Any:
    """The student ending the way the teacher's head expects its output."""
    torch = require_torch()
    head = teacher.manifest.head
    student.eval()
    if head.kind == "classify" and not head.softmax:
        return torch.nn.Sequential(student, torch.nn.Softmax(dim=1)).eval()
    if head.kind == "text_detect_db":
        return torch.nn.Sequential(student, torch.nn.Sigmoid()).eval()
    return student


def compare_student(teacher: ModelRef, student: Path, eval_frames: Sequence[np.ndarray],
                    options: DistillOptions) -> Comparison:
    """The student (an ONNX file taking the teacher's manifest) against the teacher on the views of
    ``eval_frames`` (each also turned, when ``options.rotate``: for an orientation classifier, upright
    frames alone show one class)."""
    manifest = teacher.manifest.model_copy(update={"version": f"{teacher.manifest.version}-student"})
    return compare_models(teacher, ModelRef(student, manifest),
                          [view for frame in eval_frames for view in views(frame, options.rotate)],
                          threads=options.threads)


def distill(teacher: ModelRef, student: Any, train_frames: Sequence[np.ndarray], out: Path,
            options: DistillOptions, *, eval_frames: Sequence[np.ndarray] = (),
            progress: Progress | None = None) -> DistillResult:
    """Train ``student`` on ``teacher``'s outputs over ``train_frames``, export it to ``out``.

    With ``eval_frames``, the exported student is compared with the teacher on their views (``compare_student``).
    """
    if not train_frames:
        raise DistillError("no frames to train on")
    pairs = teacher_targets(teacher, train_frames, options.rotate, options.threads)
    losses = _train(student, pairs, teacher.manifest.head.kind, options, progress)
    shape = (1, *pairs[0][0].shape)
    dense = teacher.manifest.preprocess.resize == "multiple" and teacher.manifest.preprocess.height is None
    export_onnx(_exportable(student, teacher), shape, out, dynamic_batch=True, dynamic_spatial=dense,
                source=f"distilled from {teacher.manifest.name} {teacher.manifest.version}")
    comparison = compare_student(teacher, out, eval_frames, options) if eval_frames else None
    return DistillResult(out, tuple(losses), len(pairs), comparison)
