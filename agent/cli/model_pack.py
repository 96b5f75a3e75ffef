"""``edge-agent model pack | inspect``: write a signed bundle, look into one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.guard import guarded
from agent.cli.say import EXIT_FAILURE, EXIT_OK
from agent.models import STATEMENT_VALID_S

__all__ = ["add_pack_parsers"]

PREPROCESS_FLAGS = ("input_name", "resize", "resize_short", "multiple", "color", "scale", "layout", "pad_value")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers joined by commas") from exc


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give HEIGHTxWIDTH, e.g. 224x224") from exc
    return height, width


def _labels(args: argparse.Namespace) -> list[str]:
    if args.labels_file is not None:
        lines = args.labels_file.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
    return [part.strip() for part in args.labels.split(",") if part.strip()] if args.labels else []


def _preprocess_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from agent.tools import PackError

    values = {key: getattr(args, key) for key in PREPROCESS_FLAGS}
    if args.size is not None:
        values["height"], values["width"] = args.size
    for key in ("mean", "std"):
        value = getattr(args, key)
        if value is not None and len(value) != 3:
            raise PackError(f"--{key} needs three values (one per colour channel), got {len(value)}")
        values[key] = value
    return values


def cmd_pack(args: argparse.Namespace) -> int:
    from agent.tools import PackError, build_manifest, find_manifest, pack_model

    template = None
    if args.preprocess_from is not None:
        template = find_manifest(args.preprocess_from)
        if template is None:
            raise PackError(f"{args.preprocess_from}: no manifest.json there")
    name = args.name or (template.name if template else args.model.stem)
    version = args.version or (template.version if template else None)
    if version is None:
        raise PackError("give --version (or --preprocess-from a manifest that has one)")
    head: dict[str, Any] = {"output_name": args.output_name}
    if args.probabilities:
        head["softmax"] = False
    manifest = build_manifest(name=name, version=version, task=args.task, labels=_labels(args),
                              template=template, preprocess=_preprocess_overrides(args), head=head,
                              license=args.license, description=args.description)
    result = pack_model(args.model, manifest, args.output, profile_video=args.profile_video,
                        golden_frames=args.golden_frames, profile_frames=args.profile_frames,
                        rtol=args.golden_rtol, atol=args.golden_atol,
                        extra_files=args.include, sign_key=args.sign, sign_valid_s=args.valid_days * 86_400)
    print(f"{result.bundle}: {result.manifest.name} {result.manifest.version}, {len(result.manifest.files)} files, "
          f"{len(result.manifest.golden)} goldens, reference {'yes' if result.manifest.reference else 'no'}")
    if result.signature is not None:
        print(f"signature: {result.signature}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from agent.tools import format_inspection, inspect_bundle

    result = inspect_bundle(args.bundle, public_key=args.pubkey, signature=args.signature)
    if args.json:
        data = asdict(result)
        data["path"] = str(result.path)
        data["manifest"] = result.manifest.model_dump(mode="json") if result.manifest else None
        data["ok"] = result.ok
        print(json.dumps(data, indent=2))
    else:
        print(format_inspection(result))
    return EXIT_OK if result.ok else EXIT_FAILURE


def _add_preprocess_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing (on top of --preprocess-from)")
    g.add_argument("--preprocess-from", type=Path, help="take preprocessing and head from this manifest/folder")
    g.add_argument("--input-name")
    g.add_argument("--resize", choices=("stretch", "letterbox", "short_side_crop", "multiple"))
    g.add_argument("--size", type=_size, help="model input HEIGHTxWIDTH")
    g.add_argument("--resize-short", type=int)
    g.add_argument("--multiple", type=int)
    g.add_argument("--color", choices=("rgb", "bgr"))
    g.add_argument("--scale", type=float, help="pixel scale before mean/std (default 1/255)")
    g.add_argument("--mean", type=_floats)
    g.add_argument("--std", type=_floats)
    g.add_argument("--layout", choices=("NCHW", "NHWC"))
    g.add_argument("--pad-value", type=int)


def add_pack_parsers(sub: Any) -> None:
    p = sub.add_parser("pack", help="write a deployable bundle: model, manifest, goldens, hashes, signature")
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument("--task", choices=("classify", "detect", "text_detect"), required=True)
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="class labels joined by commas")
    labels.add_argument("--labels-file", type=Path, help="one label per line")
    p.add_argument("--name", help="model name (default: the template's, else the file's stem)")
    p.add_argument("--version", help="model version (default: the template's)")
    p.add_argument("--output-name", help="the output the head reads (default: the first)")
    p.add_argument("--probabilities", action="store_true", help="the classifier already outputs probabilities")
    p.add_argument("--license", help="license name for the manifest")
    p.add_argument("--description")
    p.add_argument("--include", type=Path, action="append", default=[], help="another file to ship (LICENSE)")
    _add_preprocess_flags(p)
    p.add_argument("--profile-video", type=Path, required=True, help="frames for goldens and reference statistics")
    p.add_argument("--profile-frames", type=int, default=300, help="frames for the reference statistics")
    p.add_argument("--golden-frames", type=int, default=2)
    p.add_argument("--golden-rtol", type=float, default=1e-2)
    p.add_argument("--golden-atol", type=float, default=1e-2)
    p.add_argument("--sign", type=Path, help="ed25519 private key (PEM): also write BUNDLE.sig, the bundle's signed "
                   "statement (the deploy's 'statement' field)")
    p.add_argument("--valid-days", type=float, default=STATEMENT_VALID_S / 86_400,
                   help="days the signed statement stays valid (default %(default)g)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the bundle .tar to write")
    p.set_defaults(handler=guarded("pack", cmd_pack))

    i = sub.add_parser("inspect", help="show a bundle's manifest and files; verify hashes and signature")
    i.add_argument("bundle", type=Path)
    i.add_argument("--pubkey", type=Path, help="ed25519 public key (PEM): verify BUNDLE.sig")
    i.add_argument("--signature", type=Path, help="the signature file (default: BUNDLE.sig)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=guarded("inspect", cmd_inspect))
