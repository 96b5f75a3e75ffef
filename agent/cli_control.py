"""``edge-agent deploy | rollback | status | ping`` and ``edge-agent model keygen | sign``: the control-plane side."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .fleet.control import ControlClient, ControlError, Reply
from .models.fetch import (
    STATEMENT_VALID_S,
    Statement,
    generate_keypair,
    load_private_key,
    redact_url,
    sign_file,
    sign_statement,
)
from .mqtt.schema import DeploymentPayload

__all__ = ["add_control_parsers", "add_key_parsers", "artifact_sha256", "signed_fields",
           "valid_days_argument"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
HASH_CHUNK = 1024 * 1024
READ_TIMEOUT_S = 60.0
"""The control plane gives up on an artifact server silent this long while hashing."""


def artifact_sha256(url: str) -> str:
    """The artifact's sha256, streamed from ``url`` as this control plane sees it."""
    parts = urlsplit(url)
    digest = hashlib.sha256()
    if parts.scheme not in ("file", "http", "https"):
        raise SystemExit(f"edge-agent: cannot read {redact_url(url)} (scheme {parts.scheme or 'none'}) to hash it")
    try:
        with (Path(unquote(parts.path)).open("rb") if parts.scheme == "file"
              else urllib.request.urlopen(url, timeout=READ_TIMEOUT_S)) as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SystemExit(f"edge-agent: cannot read {redact_url(url)} to hash it: {exc}") from exc
    return digest.hexdigest()


def signed_fields(*, url: str, sha256: str, name: str, version: str, format: str, key: Path | None,
                  valid_days: float) -> dict[str, Any]:
    """A deploy's ``sha256`` and, with ``key``, its ``statement``: what this control plane downloaded and
    hashed itself is what it signs (a given ``--sha256`` must match those bytes)."""
    if sha256 != "auto" and key is None:
        return {"sha256": sha256.lower()}
    digest = artifact_sha256(url)
    if sha256 != "auto" and digest != sha256.lower():
        raise SystemExit(f"edge-agent: {redact_url(url)} does not hash to the --sha256 given; not signing it")
    fields: dict[str, Any] = {"sha256": digest}
    if key is not None:
        expires = int(time.time() + valid_days * 86_400)
        fields["statement"] = sign_statement(load_private_key(key), Statement(name, version, format, digest, expires))
    return fields


def valid_days_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--valid-days", type=float, default=STATEMENT_VALID_S / 86_400,
                        help="days the signed statement stays valid (default %(default)g)")


def _client(args: argparse.Namespace) -> ControlClient:
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    key = load_private_key(args.sign_commands) if args.sign_commands else None
    return ControlClient(args.broker, args.prefix, username=args.username, password=password, signing_key=key)


def _target(args: argparse.Namespace) -> dict[str, Any]:
    return {"device": args.device, "group": args.group}


def _print_progress(device: str, status: DeploymentPayload) -> None:
    error = f" ({status.error.code}: {status.error.message})" if status.error else ""
    print(f"[{device}] {status.state:<11} {status.progress * 100:5.1f}%{error}", file=sys.stderr, flush=True)


def _finish(replies: list[Reply]) -> int:
    failed = 0
    for reply in replies:
        payload = reply.payload
        print(json.dumps({"device": reply.device_id, **payload.model_dump(mode="json")}, sort_keys=True))
        failed += not payload.ok
    return EXIT_FAILURE if failed or not replies else EXIT_OK


def _run(args: argparse.Namespace, name: str, body: dict[str, Any], progress: bool = False) -> int:
    expect = 1 if args.device else None
    try:
        replies = asyncio.run(_client(args).send(
            name, body, **_target(args), expect=expect, timeout_s=args.timeout,
            on_progress=_print_progress if progress else None))
    except ControlError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return _finish(replies)


def cmd_deploy(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "version": args.version, "url": args.url, "format": args.format}
    if args.statement is not None:
        statement = json.loads(args.statement.read_text(encoding="ascii"))
        sha256 = statement.get("sha256") if args.sha256 == "auto" and isinstance(statement, dict) else args.sha256
        body.update(sha256=sha256, statement=statement)
    else:
        body.update(signed_fields(url=args.url, sha256=args.sha256, name=args.name, version=args.version,
                                  format=args.format, key=args.sign, valid_days=args.valid_days))
    if args.probation_window is not None:
        body["probation"] = {"window_s": args.probation_window, "max_error_rate": args.max_error_rate,
                             "max_latency_ratio": args.max_latency_ratio}
    return _run(args, "deploy", body, progress=True)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _run(args, "rollback", {"reason": args.reason} if args.reason else {})


def cmd_status(args: argparse.Namespace) -> int:
    return _run(args, "status", {})


def cmd_ping(args: argparse.Namespace) -> int:
    return _run(args, "ping", {})


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--prefix", default="edge")
    parser.add_argument("--username")
    parser.add_argument("--password-file", help="file holding the broker password")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="one device id")
    target.add_argument("--group", help="a device group (replies are collected until --timeout)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for replies")
    parser.add_argument("--sign-commands", type=Path, metavar="KEY",
                        help="ed25519 private key (PEM) of the control plane: sign the command itself")


def add_control_parsers(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="deploy a model to a device or group and wait for the outcome")
    _common(deploy)
    deploy.add_argument("--name", required=True)
    deploy.add_argument("--version", required=True)
    deploy.add_argument("--url", required=True, help="http(s):// or file:// URL of the artifact, as the device sees it")
    deploy.add_argument("--sha256", default="auto", help="hex digest, or 'auto' to compute it from --url")
    signing = deploy.add_mutually_exclusive_group()
    signing.add_argument("--sign", type=Path, help="ed25519 private key (PEM): download and hash the artifact here "
                         "and sign a statement binding name, version, format and that sha256")
    signing.add_argument("--statement", type=Path, help="a signed statement made before (model pack --sign's "
                         "BUNDLE.sig, model sign): sent as it is; with --sha256 auto its sha256 is used")
    valid_days_argument(deploy)
    deploy.add_argument("--format", choices=("onnx", "bundle", "engine"), default="bundle")
    deploy.add_argument("--probation-window", type=float, help="seconds of probation after the swap")
    deploy.add_argument("--max-error-rate", type=float, default=0.05)
    deploy.add_argument("--max-latency-ratio", type=float, default=1.5)
    deploy.set_defaults(handler=cmd_deploy)
    for name, handler, text in (("rollback", cmd_rollback, "swap back to the previous model"),
                                ("status", cmd_status, "ask for the device's status"),
                                ("ping", cmd_ping, "check that the device answers")):
        parser = sub.add_parser(name, help=text)
        _common(parser)
        if name == "rollback":
            parser.add_argument("--reason")
        parser.set_defaults(handler=handler)


def cmd_keygen(args: argparse.Namespace) -> int:
    private, public = args.out.with_suffix(".key"), args.out.with_suffix(".pub")
    for path in (private, public):
        if path.exists() and not args.force:
            print(f"edge-agent: {path} exists; use --force to overwrite", file=sys.stderr)
            return EXIT_USAGE
    generate_keypair(private, public)
    print(f"private key {private} (mode 600), public key {public}")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    statement = sign_file(load_private_key(args.key), args.artifact, name=args.name, version=args.version,
                          format=args.format, valid_s=args.valid_days * 86_400)
    print(json.dumps(statement, sort_keys=True))
    return EXIT_OK


def add_key_parsers(model_sub: Any) -> None:
    keygen = model_sub.add_parser("keygen", help="make an ed25519 key pair for signing artifacts")
    keygen.add_argument("out", type=Path, help="path stem: writes STEM.key and STEM.pub")
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(handler=cmd_keygen)
    sign = model_sub.add_parser("sign", help="print the signed statement (JSON) of an artifact: the deploy's "
                                "'statement' field")
    sign.add_argument("artifact", type=Path)
    sign.add_argument("--key", type=Path, required=True)
    sign.add_argument("--name", required=True)
    sign.add_argument("--version", required=True)
    sign.add_argument("--format", choices=("onnx", "bundle", "engine"), default="bundle")
    valid_days_argument(sign)
    sign.set_defaults(handler=cmd_sign)
