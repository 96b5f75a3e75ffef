"""Pruning with recovery: prune, fine-tune on the dense model's outputs, keep the better of the two, report.

Recovery can make a model worse (a good least-squares refit of a channel-pruned
detector lost box F1 when fine-tuned on crops), so it never decides alone:
the pruned and the recovered model are both measured against the dense
original on *validation* frames, held out from training and from the frames
of the final report, and the better one is the model written. The report
(``prune_report.json``) says which was kept and the numbers it was chosen on;
the stages it lists (dense, pruned, recovered) are measured on the evaluation
frames, which played no part in the choice.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import structlog

from agent.core import Progress
from agent.models import Manifest
from agent.tools.compare import compare_models
from agent.tools.errors import DistillError
from agent.tools.frames import hold_out
from agent.tools.graphopt import HARDSWISH_OPSET, optimize_graph
from agent.tools.modelref import DEFAULT_THREADS, ModelRef, check_empty, write_model_folder
from agent.tools.onnxutil import constants_to_initializers, load_onnx, name_nodes, set_metadata, upgrade_opset
from agent.tools.recover import RecoverOptions, recover

__all__ = [
    "DENSE",
    "PRUNED",
    "RECOVERED",
    "REFIT_FRAMES",
    "Choice",
    "PruneRecoverResult",
    "Stage",
    "dense_graph",
    "format_stages",
    "prune_recover_folder",
]

log = structlog.get_logger(__name__)

REFIT_FRAMES = 8
"""Frames whose activations rank channels and refit the consumers (2048 positions each), chosen to cover the
scene: refit on frames without text, the detector's text channels look useless (bench: F1 0.17 after pruning
with the first 8 training frames, 0.82 with frames that showed text)."""
VALIDATION_SHARE = 0.25
"""Share of the training frames held out for the choice when the caller gives no validation frames."""
VALIDATE_STAGE = "validate"
"""The stage the choice is reported under: ``progress("validate", done, 2, note="pruned F1 0.881")``."""
DENSE = "dense (exact rewrites)"
PRUNED = "pruned"
RECOVERED = "pruned + recovered"


@dataclass(frozen=True)
class Stage:
    """One model of the pruning report against the dense original on held-out frames."""

    label: str
    metric: str
    agreement: float
    rel_error: float | None
    speedup: float
    """Median inference time of the original over this model's (same frames, interleaved)."""
    size_bytes: int


@dataclass(frozen=True)
class Choice:
    """Which of the pruned and the recovered model was written, and the validation numbers it was chosen on."""

    kept: str
    """``PRUNED`` or ``RECOVERED``."""
    frames: int
    """Validation frames (held out from training and from the evaluation frames)."""
    pruned: Stage
    recovered: Stage

    @property
    def reason(self) -> str:
        name = "top-1" if self.pruned.metric == "top1" else "F1"
        got, had = self.recovered.agreement, self.pruned.agreement
        if self.kept == RECOVERED:
            return f"recovery raised validation {name} from {had:.3f} to {got:.3f} ({self.frames} frames)"
        return (f"recovery did not improve validation {name} ({got:.3f} recovered, {had:.3f} pruned, "
                f"{self.frames} frames): the pruned model is kept")

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "reason": self.reason, "frames": self.frames,
                "pruned": asdict(self.pruned), "recovered": asdict(self.recovered)}


@dataclass(frozen=True)
class PruneRecoverResult:
    """The written model folder's manifest and what ``prune_report.json`` holds."""

    manifest: Manifest
    stages: tuple[Stage, ...]
    pruning: dict[str, Any]
    losses: tuple[float, ...]
    seconds: dict[str, float]
    """How long each step took: prune, recover, validate, evaluate."""
    choice: Choice | None = None
    """None without recovery (the pruned model is the only candidate)."""

    @property
    def kept(self) -> Stage:
        """The evaluation stage of the model written."""
        label = PRUNED if self.choice is None else self.choice.kept
        return next(stage for stage in self.stages if stage.label == label)

    def to_dict(self) -> dict[str, Any]:
        return {"pruning": self.pruning, "stages": [asdict(stage) for stage in self.stages],
                "kept": self.kept.label, "choice": None if self.choice is None else self.choice.to_dict(),
                "losses": list(self.losses), "seconds": self.seconds}


def _stage(label: str, source: ModelRef, candidate: ModelRef, frames: Sequence[np.ndarray], threads: int) -> Stage:
    comparison = compare_models(source, candidate, frames, threads=threads)
    a = comparison.agreement
    return Stage(label, a.metric, a.value, a.rel_error, comparison.speedup, candidate.size_bytes)


def _better(recovered: Stage, pruned: Stage) -> bool:
    """Whether ``recovered`` agrees more with the original: higher agreement, or as high and a smaller
    relative error (a tie in top-1 over a few frames is common)."""
    def error(stage: Stage) -> float:
        return math.inf if stage.rel_error is None else stage.rel_error

    return (recovered.agreement, -error(recovered)) > (pruned.agreement, -error(pruned))


def _choose(src: ModelRef, models: dict[str, ModelRef], frames: Sequence[np.ndarray], threads: int,
            progress: Progress | None) -> Choice:
    stages: dict[str, Stage] = {}
    for done, label in enumerate((PRUNED, RECOVERED), start=1):
        stages[label] = _stage(label, src, models[label], frames, threads)
        if progress is not None:
            progress(VALIDATE_STAGE, done, 2, note=f"{label} {stages[label].agreement:.3f}")
    kept = RECOVERED if _better(stages[RECOVERED], stages[PRUNED]) else PRUNED
    choice = Choice(kept, len(frames), stages[PRUNED], stages[RECOVERED])
    log.info("recovery_choice", kept=kept, pruned=round(choice.pruned.agreement, 4),
             recovered=round(choice.recovered.agreement, 4), frames=len(frames))
    return choice


def dense_graph(src: ModelRef) -> onnx.ModelProto:
    """The source with weights as initializers, the exact rewrites of ``graphopt`` and every node named."""
    model = upgrade_opset(constants_to_initializers(load_onnx(src.path)), HARDSWISH_OPSET)
    optimized, _ = optimize_graph(model)
    return name_nodes(optimized)


def _split_validation(training: Sequence[np.ndarray], validation: Sequence[np.ndarray] | None
                      ) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray]]:
    if validation is not None:
        if not validation:
            raise DistillError("recovery needs validation frames to choose between the pruned and the "
                               "recovered model")
        return training, validation
    count = max(1, round(len(training) * VALIDATION_SHARE))
    if len(training) <= count:
        raise DistillError(f"{len(training)} training frames: too few to hold out validation frames from")
    return hold_out(training, count)


def prune_recover_folder(src: ModelRef, out_dir: Path, pattern: str, sparsity: float, *,
                         calibration: Sequence[np.ndarray], training: Sequence[np.ndarray],
                         evaluation: Sequence[np.ndarray], options: RecoverOptions | None,
                         validation: Sequence[np.ndarray] | None = None, version: str | None = None,
                         progress: Progress | None = None) -> PruneRecoverResult:
    """Prune ``src`` (``channels``: structured, refit on ``calibration``; ``unstructured`` or ``2:4``:
    magnitude), recover it on ``training`` when ``options`` is given and keep the better of the pruned
    and the recovered model on ``validation`` (None: a share of ``training`` is held out for it), and
    report each stage on ``evaluation``. Writes the model folder ``out_dir`` with ``prune_report.json``."""
    from agent.tools.channels import prune_channels
    from agent.tools.prune import REPORT_FILE, parse_pattern, prune_onnx
    from agent.tools.quantize import calibration_feeds

    check_empty(out_dir)
    if not evaluation:
        raise DistillError("the pruning report needs held-out frames")
    if options is not None:
        training, validation = _split_validation(training, validation)
    threads = options.threads if options is not None else DEFAULT_THREADS
    seconds: dict[str, float] = {}
    started = time.monotonic()
    dense = dense_graph(src)
    if pattern == "channels":
        feeds = calibration_feeds(dense, src.manifest, calibration) if calibration else []
        pruned, channel_report = prune_channels(dense, sparsity, feeds)
        pruning = {"pattern": pattern, **channel_report.to_dict()}
        keep_zeros = False
    else:
        pruned, weight_report = prune_onnx(dense, sparsity, parse_pattern(pattern))
        pruning = weight_report.to_dict()
        keep_zeros = True
    seconds["prune"] = time.monotonic() - started
    models = {DENSE: dense, PRUNED: pruned}
    losses: tuple[float, ...] = ()
    choice = None
    stages: list[Stage] = []
    with tempfile.TemporaryDirectory(prefix="edge-agent-prune-") as tmp:
        if options is not None:
            result = recover(src, pruned, training, options, progress=progress, keep_zeros=keep_zeros)
            models[RECOVERED], losses = result.model, result.losses
            seconds["recover"] = result.seconds
        refs = {}
        for index, (label, model) in enumerate(models.items()):
            path = Path(tmp) / f"{index}.onnx"
            onnx.save(model, str(path))
            refs[label] = ModelRef(path, src.manifest)
        if options is not None and validation is not None:
            started = time.monotonic()
            choice = _choose(src, refs, validation, threads, progress)
            seconds["validate"] = time.monotonic() - started
        started = time.monotonic()
        for label, ref in refs.items():
            stages.append(_stage(label, src, ref, evaluation, threads))
        seconds["evaluate"] = time.monotonic() - started
    recovered = choice is not None and choice.kept == RECOVERED
    final = models[RECOVERED if recovered else PRUNED]
    suffix = {"channels": f"-channels{round(sparsity * 100)}", "2:4": "-sparse24"}.get(
        pattern, f"-pruned{round(sparsity * 100)}")
    suffix += "-recovered" if recovered else ""
    set_metadata(final, pruning={"pattern": pattern, "target": sparsity, "recovered": recovered})
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = write_model_folder(src, final, out_dir, version or src.manifest.version + suffix,
                                  f"{pattern} pruning ({sparsity:.0%}){' with recovery' if recovered else ''} of "
                                  f"{src.manifest.name} {src.manifest.version}")
    outcome = PruneRecoverResult(manifest, tuple(stages), pruning, losses, seconds, choice)
    (out_dir / REPORT_FILE).write_text(json.dumps(outcome.to_dict(), indent=2) + "\n", encoding="utf-8")
    return outcome


def format_stages(result: PruneRecoverResult) -> str:
    """Accuracy, speed and size of each stage, which model was kept and why, then how long each step took."""
    lines = [f"{'stage':<24} {'agreement':>9} {'rel.err':>8} {'x orig.':>8} {'MB':>6}"]
    for stage in result.stages:
        rel = "-" if stage.rel_error is None else f"{stage.rel_error:.3f}"
        name = "top-1" if stage.metric == "top1" else "F1"
        lines.append(f"{stage.label:<24} {name + f' {stage.agreement:.3f}':>9} {rel:>8} {stage.speedup:>8.2f} "
                     f"{stage.size_bytes / 1e6:>6.2f}")
    if result.choice is not None:
        lines.append(f"kept: {result.choice.kept} ({result.choice.reason})")
    lines.append("time: " + ", ".join(f"{step} {value:.0f} s" for step, value in result.seconds.items()))
    return "\n".join(lines)
