"""``make bench`` (``--only tools``): what the model tools buy on this CPU, measured on the demo models.

For PP-OCRv4's text detector and the orientation classifier: INT8 Q/DQ variants
(and the exact FP32 graph rewrites), among them the mixed-precision one that
the sensitivity analysis makes for a target agreement, against the original
FP32 model on ONNX Runtime's CPU provider, same threads. Speed is the frames/s
ratio of paired, interleaved rounds (variant and original one after the other,
order alternating) so machine noise hits both; agreement is the matched-box F1
(IoU 0.5) or top-1 agreement on held-out video frames (never the calibration
frames, nor the frames the target search measured on), through the agent's own
preprocessing and heads. Then 50% pruning, channels and 2:4, before and after
recovery, with the time each step took. Numbers only; nothing here asserts.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from agent.dev.base import Report
from agent.runtime import OnnxRuntimeEngine
from agent.tools import (
    ModelRef,
    Pattern,
    QuantizeOptions,
    calibration_feeds,
    compare_models,
    covering_frames,
    format_sensitivity,
    prune_folder,
    quantize_model,
    read_video_frames,
    resolve_model,
    simplify_model,
)

__all__ = ["CPU_FLAGS", "bench_tools", "cpu_flags"]

THREADS = 2
CALIBRATION_FRAMES = 32
"""Chosen to cover the scene from every other frame of VIDEO_FRAMES."""
AGREEMENT_FRAMES = 32
SEARCH_FRAMES = 32
"""Frames the target-agreement search measures on (disjoint from the calibration and agreement frames): with
16, a frame with many small boxes moved F1 by 0.06 between the search and the report."""
VIDEO_FRAMES = 270
"""Every frame of the demo video: calibration from the even ones, search and agreement from the odd ones."""
RECOVERY_FRAMES = 64
VALIDATION_FRAMES = 16
"""Frames (disjoint from training and agreement) on which the better of pruned and recovered is kept."""
RECOVERY_STEPS = 400
PRUNE_RATIOS = (0.3, 0.5)
"""Channel ratios pruned and recovered (the goal is for the channel-pruned model; 2:4 is 50% by definition)."""
PRUNE_RATIO = 0.5
PRUNED_SPEED_GOAL = 1.3
PRUNED_F1_GOAL = 0.9
TIMING_ROUNDS = 7
RUNS_PER_ROUND = 6
WARMUP_RUNS = 3
SENSITIVITY_ROWS = 12
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
SPEED_GOAL = 1.5
F1_GOAL = 0.95
TOP1_GOAL = 0.99

CPU = QuantizeOptions(target="cpu")
PER_CHANNEL = replace(CPU, per_channel=True)
AVERAGE = replace(PER_CHANNEL, method="average")
MIXED = "QDQ u8s8 mixed: sensitive nodes float"
VARIANTS: dict[str, QuantizeOptions] = {
    "QDQ u8s8 per-tensor": CPU,
    "QDQ u8s8 per-channel": PER_CHANNEL,
    "QDQ u8s8 per-channel, average": AVERAGE,
    MIXED: PER_CHANNEL,
    "QDQ s8s8 symmetric (TensorRT)": QuantizeOptions(target="tensorrt", per_channel=True),
}
"""Text detector variants (the mixed one with the model's target agreement, from per-channel minmax: the
best full INT8 start, F1 0.88-0.91 against 0.79 with average ranges); the classifier gets the per-channel
ones and the TensorRT one."""



def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of CPU_FLAGS this machine's /proc/cpuinfo lists."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return {flag: flag in flags for flag in CPU_FLAGS}


@dataclass(frozen=True)
class Row:
    label: str
    agreement: float
    rel_error: float | None
    speed_ratio: float
    ms: float
    size_mb: float


def paired_speed(reference: Path, variants: Sequence[Path], feed: dict[str, np.ndarray]) -> tuple[float, list[float]]:
    """Median ms of the reference, and per variant the median over rounds of its frames/s ratio to it."""
    engines = [OnnxRuntimeEngine.load(p, threads=THREADS) for p in (reference, *variants)]
    for engine in engines:
        for _ in range(WARMUP_RUNS):
            engine.infer(feed)
    ratios: list[list[float]] = [[] for _ in variants]
    reference_ms: list[float] = []
    for round_index in range(TIMING_ROUNDS):
        for index, engine in enumerate(engines[1:]):
            pair = (engines[0], engine) if round_index % 2 == 0 else (engine, engines[0])
            seconds = {}
            for member in pair:
                start = time.perf_counter()
                for _ in range(RUNS_PER_ROUND):
                    member.infer(feed)
                seconds[id(member)] = time.perf_counter() - start
            ratios[index].append(seconds[id(engines[0])] / seconds[id(engine)])
            reference_ms.append(seconds[id(engines[0])] * 1000.0 / RUNS_PER_ROUND)
    for engine in engines:
        engine.close()
    return statistics.median(reference_ms), [statistics.median(r) for r in ratios]


def _variants(source: ModelRef, variants: dict[str, QuantizeOptions], calibration: list[np.ndarray],
              search: list[np.ndarray], target: float, work: Path, report: Report) -> list[tuple[str, ModelRef]]:
    made = []
    simplified = work / "simplified"
    simplify_model(source, simplified)
    made.append(("FP32 exact graph rewrites", resolve_model(simplified)))
    for index, (label, options) in enumerate(variants.items()):
        started = time.monotonic()
        mixed = label == MIXED
        result = quantize_model(source, calibration, work / f"q{index}", options,
                                target_agreement=target if mixed else None, eval_frames=search if mixed else ())
        made.append((label, resolve_model(result.path.parent)))
        report(f"  quantized: {label} ({time.monotonic() - started:.0f} s)")
        if result.sensitivity is not None:
            report("    " + format_sensitivity(result.sensitivity, SENSITIVITY_ROWS).replace("\n", "\n    "))
    return made


def _table(source: ModelRef, made: list[tuple[str, ModelRef]], frames: list[np.ndarray]) -> list[Row]:
    feed = calibration_feeds(onnx.load(str(source.path)), source.manifest, frames[:1])[0]
    reference_ms, ratios = paired_speed(source.path, [ref.path for _, ref in made], feed)
    rows = [Row("FP32 original", 1.0, 0.0, 1.0, reference_ms, source.size_bytes / 1e6)]
    for (label, ref), ratio in zip(made, ratios, strict=True):
        agreement = compare_models(source, ref, frames, threads=THREADS).agreement
        rows.append(Row(label, agreement.value, agreement.rel_error, ratio, reference_ms / ratio,
                        ref.size_bytes / 1e6))
    return rows


def _report_table(rows: list[Row], metric: str, report: Report) -> None:
    """The table; ``x rewr.`` is the speed against the FP32 model with the exact rewrites, i.e. what INT8
    itself adds (the rewrites are part of every INT8 variant but the one without them)."""
    rewritten = rows[1].speed_ratio
    report(f"  {'variant':<34} {metric:>8} {'rel.err':>8} {'ms':>8} {'x FP32':>7} {'x rewr.':>8} {'MB':>6}")
    for r in rows:
        rel = "-" if r.rel_error is None else f"{r.rel_error:.3f}"
        report(f"  {r.label:<34} {r.agreement:>8.3f} {rel:>8} {r.ms:>8.1f} {r.speed_ratio:>7.2f} "
               f"{r.speed_ratio / rewritten:>8.2f} {r.size_mb:>6.2f}")


def _spread(frames: list[np.ndarray], count: int) -> list[np.ndarray]:
    """``count`` of ``frames`` spread evenly over them (the first ``count`` would be the start of the video
    only: the search once measured on the text pages and the report on the photos after them)."""
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, min(count, len(frames)))]


def _frame_sets(demo: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(calibration, search, agreement) frames, disjoint, each spread over the whole video: agreement and
    search from the odd frames, calibration chosen to cover the scene from the even ones."""
    frames = read_video_frames(demo / "video.mp4", VIDEO_FRAMES)
    calibration = covering_frames(frames[0::2], CALIBRATION_FRAMES)
    return calibration, _spread(frames[3::4], SEARCH_FRAMES), _spread(frames[1::4], AGREEMENT_FRAMES)


def _bench_model(demo: Path, folder: str, variants: dict[str, QuantizeOptions], metric: str, goal: float,
                 report: Report) -> None:
    source = resolve_model(demo / "models" / folder)
    calibration, search, held_out = _frame_sets(demo)
    report(f"\n== INT8 and graph rewrites: {source.manifest.name} {source.manifest.version}, {THREADS} threads, "
           f"{len(calibration)} calibration frames (covering), target search on {len(search)} frames, "
           f"agreement on {len(held_out)} other frames ==")
    with tempfile.TemporaryDirectory() as tmp:
        rows = _table(source, _variants(source, variants, calibration, search, goal, Path(tmp), report), held_out)
    _report_table(rows, metric, report)
    best = max(rows[2:], key=lambda r: r.speed_ratio)
    both = [r for r in rows[2:] if r.speed_ratio >= SPEED_GOAL and r.agreement >= goal]
    report(f"  fastest INT8: {best.label} x{best.speed_ratio:.2f} at {metric} {best.agreement:.3f} "
           f"(goals: x{SPEED_GOAL} and {metric} >= {goal}); variants meeting both: "
           f"{', '.join(r.label for r in both) or 'none'}")


def _bench_pruning(demo: Path, report: Report) -> None:
    from agent.tools import REFIT_FRAMES, RecoverOptions, format_stages, prune_recover_folder

    frames = read_video_frames(demo / "video.mp4", VIDEO_FRAMES)
    training, held_out = _spread(frames[0::2], RECOVERY_FRAMES), _spread(frames[1::4], AGREEMENT_FRAMES)
    validation = _spread(frames[3::4], VALIDATION_FRAMES)  # the choice of pruned or recovered: neither set
    source = resolve_model(demo / "models" / "text-det-v4")
    options = RecoverOptions(steps=RECOVERY_STEPS, threads=THREADS)
    report(f"\n== pruning and recovery: {source.manifest.name} {source.manifest.version}, "
           f"{len(training)} unlabelled training frames, {RECOVERY_STEPS} steps of {options.batch_size} "
           f"{options.crop}x{options.crop} crops, lr {options.learning_rate:g}, the better of pruned and "
           f"recovered kept on {len(validation)} validation frames, agreement on {len(held_out)} other frames ==")
    runs: list[tuple[str, float]] = [*(("channels", ratio) for ratio in PRUNE_RATIOS), ("2:4", PRUNE_RATIO)]
    with tempfile.TemporaryDirectory() as tmp:
        for pattern, ratio in runs:
            result = prune_recover_folder(source, Path(tmp) / f"{pattern.replace(':', '')}{round(ratio * 100)}",
                                          pattern, ratio, calibration=covering_frames(training, REFIT_FRAMES),
                                          training=training, evaluation=held_out, options=options,
                                          validation=validation)
            report(f"  {pattern} {ratio:.0%}:")
            report("    " + format_stages(result).replace("\n", "\n    "))
            last = result.kept  # the model written: the recovered one only where it validated better
            if pattern == "channels":
                met = last.speedup >= PRUNED_SPEED_GOAL and last.agreement >= PRUNED_F1_GOAL
                report(f"    goal x{PRUNED_SPEED_GOAL} at F1 >= {PRUNED_F1_GOAL}: {last.label} (kept) "
                       f"x{last.speedup:.2f} at F1 {last.agreement:.3f}: {'met' if met else 'not met'}")
    report(f"\n== {PRUNE_RATIO:.0%} magnitude pruning of the classifier (no recovery), {AGREEMENT_FRAMES} frames ==")
    with tempfile.TemporaryDirectory() as tmp:
        classifier = resolve_model(demo / "models" / "orientation-0.0.11")
        patterns: tuple[Pattern, ...] = ("unstructured", "2:4")
        for weight_pattern in patterns:
            out = Path(tmp) / weight_pattern.replace(":", "")
            _, pruned = prune_folder(classifier, out, PRUNE_RATIO, weight_pattern)
            comparison = compare_models(classifier, resolve_model(out), held_out, threads=THREADS)
            report(f"  {weight_pattern:<13} sparsity {pruned.sparsity:5.1%}: top-1 {comparison.agreement.value:.3f}, "
                   f"speed x{comparison.speedup:.2f} (dense kernels)")


def bench_tools(demo: Path, report: Report) -> None:
    """The model tools' figures (INT8 variants, graph rewrites, pruning), one line at a time to ``report``."""
    flags = cpu_flags()
    report("\n== model tools ==")
    report("CPU flags: " + ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in flags.items()))
    _bench_model(demo, "text-det-v4", VARIANTS, "box F1", F1_GOAL, report)
    classifier = {label: VARIANTS[label] for label in ("QDQ u8s8 per-channel", "QDQ u8s8 per-channel, average",
                                                       MIXED, "QDQ s8s8 symmetric (TensorRT)")}
    _bench_model(demo, "orientation-0.0.11", classifier, "top-1", TOP1_GOAL, report)
    _bench_pruning(demo, report)
