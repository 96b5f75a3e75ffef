"""A structured student: the teacher's own graph with a share of its channels removed, then distilled.

A student trained from scratch starts from nothing and, on the footage one
device sees, does not get close to the teacher within minutes of CPU training
(docs/models.md, distill). This one starts from the teacher: every prunable
channel group (``agent.tools.channels``) loses ``share`` of its channels,
ranked by what they carry on a few frames chosen to cover the scene, and the
1x1 convolutions that read them are refit by least squares; then the pruned
graph learns the teacher's outputs on every training frame view (the teacher
labels them, so no labels are needed), through ``agent.tools.recover``. The
student keeps the teacher's input, output and manifest; what it loses is
channels, so it is smaller and faster on dense kernels.

Needs the optional ``torch`` extra and onnx2torch.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import structlog

from agent.core import Progress
from agent.tools.channels import prune_channels
from agent.tools.distill import DistillOptions, DistillResult, compare_student, views
from agent.tools.errors import DistillError
from agent.tools.frames import covering_frames
from agent.tools.modelref import ModelRef
from agent.tools.onnxutil import set_metadata
from agent.tools.prune_recover import REFIT_FRAMES, dense_graph
from agent.tools.quantize import calibration_feeds
from agent.tools.recover import RecoverOptions, recover

__all__ = ["CHANNEL_STUDENT", "channel_share", "distill_channels"]

log = structlog.get_logger(__name__)

CHANNEL_STUDENT = re.compile(r"channels:(0?\.\d+)")
"""``--student channels:0.5``: the teacher with half the channels of each prunable group removed."""


def channel_share(spec: str) -> float | None:
    """The share of channels a ``channels:<share>`` student spec removes, or None for another spec."""
    found = CHANNEL_STUDENT.fullmatch(spec)
    if found is None:
        if spec.startswith("channels:"):
            raise DistillError(f"student {spec!r}: the channel share must be a fraction, e.g. channels:0.5")
        return None
    share = float(found.group(1))
    if not 0.0 < share < 1.0:
        raise DistillError(f"student {spec!r}: the channel share must be in (0, 1)")
    return share


def _epoch_means(losses: Sequence[float], steps_per_epoch: int) -> tuple[float, ...]:
    return tuple(float(np.mean(losses[i:i + steps_per_epoch])) for i in range(0, len(losses), steps_per_epoch))


def distill_channels(teacher: ModelRef, share: float, train_frames: Sequence[np.ndarray], out: Path,
                     options: DistillOptions, *, eval_frames: Sequence[np.ndarray] = (),
                     progress: Progress | None = None) -> DistillResult:
    """The teacher with ``share`` of its channels removed, refit and distilled on ``train_frames``, to ``out``.

    An epoch is as many steps of ``options.batch_size`` views as one pass over the training views
    (views drawn at random). With ``eval_frames``, the student is compared with the teacher on their
    views (``compare_student``), and so is the pruned graph before distillation (``DistillResult.start``).
    """
    if not train_frames:
        raise DistillError("no frames to train on")
    dense = dense_graph(teacher)
    refit = [view for frame in covering_frames(list(train_frames), REFIT_FRAMES)
             for view in views(frame, options.rotate)]
    pruned, report = prune_channels(dense, share, calibration_feeds(dense, teacher.manifest, refit))
    log.info("student_pruned", share=share, channels_before=report.channels_before,
             channels_after=report.channels_after, params_before=report.params_before,
             params_after=report.params_after)
    start = None
    if eval_frames:
        with tempfile.TemporaryDirectory(prefix="edge-agent-student-") as tmp:
            onnx.save(pruned, str(Path(tmp) / "pruned.onnx"))
            start = compare_student(teacher, Path(tmp) / "pruned.onnx", eval_frames, options)
    samples = len(train_frames) * len(views(train_frames[0], options.rotate))
    steps_per_epoch = math.ceil(samples / options.batch_size)
    recovered = recover(teacher, pruned, train_frames,
                        RecoverOptions(steps=options.epochs * steps_per_epoch, batch_size=options.batch_size,
                                       learning_rate=options.learning_rate, crop=None, rotate=options.rotate,
                                       seed=options.seed, threads=options.threads),
                        progress=progress)
    model = recovered.model
    set_metadata(model, source=f"distilled from {teacher.manifest.name} {teacher.manifest.version}",
                 student=f"channels:{share}")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    comparison = compare_student(teacher, out, eval_frames, options) if eval_frames else None
    return DistillResult(out, _epoch_means(recovered.losses, steps_per_epoch), recovered.samples, comparison,
                         pruning=report, start=start)
