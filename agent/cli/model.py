"""``edge-agent model export | quantize | simplify | prune | compare | distill``: the optimisation commands.

Each handler imports its tool when it runs, so ``edge-agent --help`` stays fast
and torch is needed only by ``export``, ``distill`` and ``prune --recover``. Every tool
error is printed as one line naming what is wrong (exit 1); argparse answers
usage errors (exit 2). Calibration, the sensitivity search, distillation and
recovery show their progress on stderr (agent.cli.progress: bars on a terminal,
lines when piped).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.guard import guarded
from agent.cli.progress import ProgressBoard
from agent.cli.say import EXIT_FAILURE, EXIT_OK

__all__ = ["add_tool_parsers"]

DEFAULT_COMPARE_FRAMES = 50
DEFAULT_CALIBRATION_FRAMES = 32
DEFAULT_EVAL_FRAMES = 16
"""Held-out frames for --target-agreement: a box F1 over 16 frames moves by about 0.02 between frame sets."""
DEFAULT_REPORT_ROWS = 20
DEFAULT_VALIDATION_FRAMES = 16
"""Frames the better of the pruned and the recovered model is chosen on (held out from training and the report)."""

def _frames(args: argparse.Namespace, count: int) -> list[Any]:
    from agent.tools import read_frames

    return read_frames(count, video=getattr(args, "video", None) or getattr(args, "calib_video", None),
                       images=getattr(args, "calib_images", None))


def cmd_export(args: argparse.Namespace) -> int:
    from agent.tools import export_onnx, load_torch_model, parse_shape

    shape = parse_shape(args.input_shape)
    result = export_onnx(load_torch_model(args.model), shape, args.output, opset=args.opset,
                         dynamic_batch=args.dynamic_batch, source=args.model)
    print(f"{result.path}: opset {result.opset}, input {'x'.join(map(str, result.input_shape))}"
          f"{' (dynamic batch)' if args.dynamic_batch else ''}; ONNX Runtime matches PyTorch "
          f"(max abs error {result.max_abs_error:.2g})")
    return EXIT_OK


def _calibration_split(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """(calibration, held-out) frames: the held-out ones spread evenly over what was read, the
    calibration frames chosen from the rest to cover the scene (``--select cover``) or evenly."""
    from agent.tools import COVER_POOL, covering_frames

    held = args.eval_frames if args.target_agreement is not None else 0
    pool = COVER_POOL if args.select == "cover" else 1
    frames = _frames(args, args.frames * pool + held)
    step = max(1, len(frames) // held) if held else 0
    held_out = set(range(step // 2, len(frames), step)[:held]) if held else set()
    evaluation = [frame for i, frame in enumerate(frames) if i in held_out]
    rest = [frame for i, frame in enumerate(frames) if i not in held_out]
    calibration = covering_frames(rest, args.frames) if args.select == "cover" else rest[: args.frames]
    return calibration, evaluation


def cmd_quantize(args: argparse.Namespace) -> int:
    from agent.tools import QuantizeOptions, format_sensitivity, quantize_model, resolve_model

    options = QuantizeOptions(method=args.method, target=args.target, per_channel=args.per_channel,
                              format=args.format, reduce_range=args.reduce_range,
                              exclude_nodes=tuple(args.exclude), op_types=tuple(args.op_types),
                              optimize=not args.no_optimize, float_first=args.float_first)
    source = resolve_model(args.model, args.manifest)
    calibration, evaluation = _calibration_split(args)
    with ProgressBoard() as board:
        result = quantize_model(source, calibration, args.output, options, version=args.version,
                                target_agreement=args.target_agreement, eval_frames=evaluation,
                                progress=board.reporter())
    if result.sensitivity is not None:
        print(format_sensitivity(result.sensitivity, args.top))
    upgraded = f", opset {result.source_opset} -> {result.opset}" if result.opset != result.source_opset else ""
    print(f"{args.output}: {result.manifest.name} {result.manifest.version}, INT8 {options.format.upper()} "
          f"for {options.target}, {result.frames} calibration frames, {options.method}"
          f"{', per channel' if options.per_channel else ''}{upgraded}; {result.seconds:.1f} s")
    return EXIT_OK if result.sensitivity is None or result.sensitivity.met else EXIT_FAILURE


def cmd_simplify(args: argparse.Namespace) -> int:
    from agent.tools import resolve_model, simplify_model

    manifest, report = simplify_model(resolve_model(args.model, args.manifest), args.output, version=args.version)
    print(f"{args.output}: {manifest.name} {manifest.version}, {report.nodes_before} -> {report.nodes_after} nodes "
          f"({report.folded_after + report.folded_before} affine steps folded into convolutions, "
          f"{report.hardswish} HardSwish fused)")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from agent.tools import format_report, prune_folder, resolve_model

    source = resolve_model(args.model, args.manifest)
    if args.pattern == "channels" or args.recover:
        return _prune_recover(args, source)
    manifest, report = prune_folder(source, args.output, args.sparsity, args.pattern, version=args.version)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report, args.top))
        print(f"{args.output}: {manifest.name} {manifest.version} (report in prune_report.json)")
    return EXIT_OK


def _prune_recover(args: argparse.Namespace, source: Any) -> int:
    from agent.tools import (
        REFIT_FRAMES,
        PruneError,
        RecoverOptions,
        covering_frames,
        format_stages,
        hold_out,
        prune_recover_folder,
        read_video_frames,
    )

    if args.video is None:
        raise PruneError("channel pruning and --recover need --video: frames to refit, recover and report on")
    options = None
    if args.recover:
        given = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr, "crop": args.crop}
        chosen = {key: value for key, value in given.items() if value is not None}
        if chosen.get("crop") == 0:
            chosen["crop"] = None
        options = RecoverOptions(threads=args.threads, **chosen)
        if args.val_frames < 1:
            raise PruneError("--recover needs --val-frames >= 1: the frames the better of the pruned and the "
                             "recovered model is chosen on")
    held = args.val_frames if args.recover else 0
    rest, evaluation = hold_out(read_video_frames(args.video, args.frames + held + args.eval_frames),
                                args.eval_frames)
    training, validation = hold_out(rest, held)
    with ProgressBoard() as board:
        result = prune_recover_folder(source, args.output, args.pattern, args.sparsity,
                                      calibration=covering_frames(training, REFIT_FRAMES), training=training,
                                      evaluation=evaluation, options=options,
                                      validation=validation if args.recover else None, version=args.version,
                                      progress=board.reporter())
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_stages(result))
    print(f"{args.output}: {result.manifest.name} {result.manifest.version} (report in prune_report.json)")
    return EXIT_OK


def _pair(args: argparse.Namespace) -> tuple[Any, Any]:
    """A and B; an .onnx without a manifest takes --manifest, else the other side's folder."""
    from agent.tools import find_manifest, resolve_model

    sides = (args.a, args.b)
    own = [path.is_dir() and find_manifest(path) is not None for path in sides]

    def manifest_for(index: int) -> Path | None:
        if args.manifest is not None:
            return Path(args.manifest)
        other = 1 - index
        return None if own[index] or not own[other] else sides[other]

    return resolve_model(sides[0], manifest_for(0)), resolve_model(sides[1], manifest_for(1))


def cmd_compare(args: argparse.Namespace) -> int:
    from agent.tools import compare_models, format_comparison

    a, b = _pair(args)
    frames = _frames(args, args.frames)
    with ProgressBoard() as board:
        result = compare_models(a, b, frames, threads=args.threads, iou=args.iou, fused=not args.float_input,
                                progress=board.reporter())
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_comparison(result))
    return EXIT_OK


def cmd_distill(args: argparse.Namespace) -> int:
    from agent.tools import (
        DistillOptions,
        channel_share,
        distill,
        distill_channels,
        format_comparison,
        hold_out,
        load_torch_model,
        read_video_frames,
        resolve_model,
    )

    options = DistillOptions(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             temperature=args.temperature, rotate=not args.no_rotate, threads=args.threads)
    teacher = resolve_model(args.teacher, args.manifest)
    share = channel_share(args.student)
    training, evaluation = hold_out(read_video_frames(args.video, args.frames + args.eval_frames), args.eval_frames)
    with ProgressBoard() as board:
        if share is None:
            result = distill(teacher, load_torch_model(args.student), training, args.output, options,
                             eval_frames=evaluation, progress=board.reporter())
        else:
            result = distill_channels(teacher, share, training, args.output, options, eval_frames=evaluation,
                                      progress=board.reporter())
    if result.pruning is not None:
        pruning = result.pruning
        print(f"student: the teacher with {pruning.channels_before} -> {pruning.channels_after} channels in "
              f"{len(pruning.groups)} groups, {pruning.params_before} -> {pruning.params_after} parameters")
    if result.start is not None:
        start = result.start
        print(f"before distillation (pruned and refit): top-1 agreement {start.agreement.value * 100:.1f}%, "
              f"speed B/A x{start.speedup:.2f} (median)")
    print(f"{result.path}: student trained on {result.samples} frame views for {len(result.losses)} epochs")
    if result.comparison is not None:
        print(format_comparison(result.comparison))
    return EXIT_OK


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a PyTorch model to ONNX (needs the torch extra)")
    p.add_argument("model", help="MODEL.pt (TorchScript or pickled module) or package.module:factory")
    p.add_argument("--input-shape", required=True, help="e.g. 1x3x224x224")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch axis free")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(handler=guarded("export", cmd_export))


def _add_quantize(sub: Any) -> None:
    p = sub.add_parser("quantize", help="INT8 post-training static quantization to a Q/DQ ONNX model folder")
    p.add_argument("model", type=Path, help="a model folder (with manifest.json) or an .onnx file")
    p.add_argument("--manifest", type=Path, help="the manifest (file or folder) for a bare .onnx")
    calib = p.add_mutually_exclusive_group(required=True)
    calib.add_argument("--calib-video", type=Path, help="calibration frames from this video")
    calib.add_argument("--calib-images", type=Path, help="calibration frames from this image folder")
    p.add_argument("--frames", type=int, default=DEFAULT_CALIBRATION_FRAMES, help="calibration frames")
    p.add_argument("--method", choices=("minmax", "average", "entropy", "percentile"), default="minmax",
                   help="activation ranges: extremes, per-frame extremes averaged, KL histogram, 99.99th percentile")
    p.add_argument("--select", choices=("cover", "even"), default="cover",
                   help="calibration frames chosen to cover the scene (from 4x as many) or evenly spaced")
    p.add_argument("--target-agreement", type=float, metavar="A",
                   help="keep the most sensitive layers in float until the agreement with the source (box F1 or "
                        "top-1 on held-out frames) reaches A; writes sensitivity_report.json; exit 1 if not met")
    p.add_argument("--eval-frames", type=int, default=DEFAULT_EVAL_FRAMES,
                   help="held-out frames the target agreement is measured on")
    p.add_argument("--top", type=int, default=DEFAULT_REPORT_ROWS, help="sensitivity rows to print")
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    p.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="tensorrt: symmetric int8 (builds on TensorRT, runs on ORT); cpu: u8s8 for ORT on x86")
    p.add_argument("--format", choices=("qdq", "qoperator"), default="qdq")
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (x86 CPUs without VNNI)")
    p.add_argument("--exclude", type=_names, default=[], metavar="NODE[,NODE]", help="nodes left in float")
    p.add_argument("--op-types", type=_names, default=[], metavar="OP[,OP]", help="only quantize these ops")
    p.add_argument("--float-first", type=int, default=0, metavar="N",
                   help="leave the first N convolutions (the high-resolution stem) in float")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip the exact graph rewrites (folded affine steps, fused HardSwish)")
    p.add_argument("--version", help="version of the result (default: the source's + '-int8')")
    p.add_argument("-o", "--output", type=Path, required=True, help="the model folder to write")
    p.set_defaults(handler=guarded("quantize", cmd_quantize))


def _add_simplify(sub: Any) -> None:
    p = sub.add_parser("simplify", help="exact FP32 graph rewrites: fold affine steps into convolutions, "
                       "fuse HardSwish")
    p.add_argument("model", type=Path, help="a model folder or an .onnx file (with --manifest)")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--version", help="version of the result (default: the source's + '-simplified')")
    p.add_argument("-o", "--output", type=Path, required=True, help="the model folder to write")
    p.set_defaults(handler=guarded("simplify", cmd_simplify))


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_prune(sub: Any) -> None:
    p = sub.add_parser("prune", help="magnitude-prune weights (unstructured or 2:4) with a per-layer report")
    p.add_argument("model", type=Path, help="a model folder or an .onnx file (with --manifest)")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--sparsity", type=float, default=0.5,
                   help="target share of zero weights per layer (channels: share of each group's channels removed)")
    p.add_argument("--pattern", choices=("unstructured", "2:4", "channels"), default="unstructured",
                   help="channels: whole channels removed (smaller and faster on dense kernels; needs --video)")
    p.add_argument("--recover", action="store_true",
                   help="fine-tune the pruned model on the dense model's outputs on --video (needs torch, onnx2torch)")
    p.add_argument("--video", type=Path, help="unlabelled frames for the channel refit, recovery and the report")
    p.add_argument("--frames", type=int, default=48, help="training frames")
    p.add_argument("--eval-frames", type=int, default=16, help="held-out frames for the report")
    p.add_argument("--val-frames", type=int, default=DEFAULT_VALIDATION_FRAMES,
                   help="with --recover: other held-out frames on which the better of the pruned and the "
                        "recovered model is kept")
    p.add_argument("--steps", type=int, help="recovery steps (default 200)")
    p.add_argument("--batch-size", type=int, help="default 4")
    p.add_argument("--lr", type=float, help="Adam's learning rate, cosine-annealed (default 3e-4)")
    p.add_argument("--crop", type=int, help="square crops for dense models (default 256; 0: whole frames)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--version", help="version of the result (default: source's + '-pruned50' or '-sparse24')")
    p.add_argument("--top", type=int, default=None, help="print only the first N layers")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-o", "--output", type=Path, required=True, help="the model folder to write")
    p.set_defaults(handler=guarded("prune", cmd_prune))


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="agreement, speed and size of two models on the same frames")
    p.add_argument("a", type=Path, help="reference model: folder or .onnx")
    p.add_argument("b", type=Path, help="candidate model: folder or .onnx")
    p.add_argument("--manifest", type=Path, help="manifest for .onnx files without a folder")
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--frames", type=int, default=DEFAULT_COMPARE_FRAMES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a box match (detectors)")
    p.add_argument("--float-input", action="store_true",
                   help="feed float tensors instead of fusing the preprocessing into the graph")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=guarded("compare", cmd_compare))


def _add_distill(sub: Any) -> None:
    p = sub.add_parser("distill", help="train a small student on a teacher's outputs (needs the torch extra)")
    p.add_argument("--teacher", type=Path, required=True, help="teacher model folder or .onnx (with --manifest)")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--student", required=True,
                   help="package.module:factory returning an untrained module, or channels:SHARE: the teacher's "
                        "own graph with SHARE of each prunable group's channels removed, refit and distilled "
                        "(needs onnx2torch)")
    p.add_argument("--video", type=Path, required=True, help="unlabelled frames")
    p.add_argument("--frames", type=int, default=64, help="training frames (each also turned 90/180/270)")
    p.add_argument("--eval-frames", type=int, default=32,
                   help="held-out frames for the comparison (each also turned 90/180/270)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=1.0, help="softens the teacher (package.module:factory)")
    p.add_argument("--no-rotate", action="store_true", help="do not add turned copies of the frames")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--output", type=Path, required=True, help="the student .onnx to write")
    p.set_defaults(handler=guarded("distill", cmd_distill))


def add_tool_parsers(model_sub: Any) -> None:
    """Register export, quantize, simplify, prune, compare, distill, pack and inspect under ``model``."""
    from agent.cli.model_pack import add_pack_parsers

    _add_export(model_sub)
    _add_quantize(model_sub)
    _add_simplify(model_sub)
    _add_prune(model_sub)
    _add_compare(model_sub)
    _add_distill(model_sub)
    add_pack_parsers(model_sub)
