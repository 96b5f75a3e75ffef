"""``edge-agent deploy | rollback | status | ping`` and ``edge-agent model keygen | sign``: the control-plane side."""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.cli.connect import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Connection,
    add_connection_arguments,
    connect,
    fail,
    silence_hint,
)
from agent.cli.progress import ProgressBoard
from agent.core import Progress
from agent.fleet import (
    FORMATS,
    HEAD_BYTES,
    ControlError,
    NoReplyError,
    PlanError,
    Reply,
    new_command_id,
    parse_duration,
    parse_percent,
    sniff,
)
from agent.models import (
    STATEMENT_VALID_S,
    Statement,
    generate_keypair,
    load_private_key,
    redact_url,
    sign_file,
    sign_statement,
)
from agent.wire import DeploymentPayload

__all__ = ["add_control_parsers", "add_key_parsers", "add_shadow_arguments", "artifact_format", "artifact_sha256",
           "parse_agreement", "shadow_terms", "signed_fields", "valid_days_argument"]

EXIT_OK = 0
HASH_CHUNK = 1024 * 1024
READ_TIMEOUT_S = 60.0
"""The control plane gives up on an artifact server silent this long while hashing."""
HASH_STAGE = "sha256"
"""The stage the control plane's own read of an artifact (to hash and sign it) is shown under, in KiB."""
KIB = 1024
FORMAT_BY_SUFFIX = {".tar": "bundle", ".tgz": "bundle", ".gz": "bundle", ".onnx": "onnx", ".engine": "engine",
                    ".plan": "engine", ".trt": "engine"}
"""The format of an artifact this control plane cannot read, by its name."""


def artifact_sha256(url: str, progress: Progress | None = None) -> str:
    """The artifact's sha256, streamed from ``url`` as this control plane sees it (``progress``: in KiB)."""
    parts = urlsplit(url)
    digest = hashlib.sha256()
    if parts.scheme not in ("file", "http", "https"):
        raise SystemExit(f"edge-agent: cannot read {redact_url(url)} (scheme {parts.scheme or 'none'}) to hash it")
    stage = f"{HASH_STAGE} {PurePosixPath(unquote(parts.path)).name}"
    try:
        with (Path(unquote(parts.path)).open("rb") if parts.scheme == "file"
              else urllib.request.urlopen(url, timeout=READ_TIMEOUT_S)) as stream:
            if parts.scheme == "file":
                size = Path(unquote(parts.path)).stat().st_size
            else:  # a server that names no length: a count without a bar
                length = str(getattr(stream, "headers", {}).get("Content-Length", ""))
                size = int(length) if length.isdigit() else 0
            done = 0
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(stage, done // KIB, size // KIB, note="KiB")
    except OSError as exc:
        raise SystemExit(f"edge-agent: cannot read {redact_url(url)} to hash it: {exc}") from exc
    return digest.hexdigest()


def signed_fields(*, url: str, sha256: str, name: str, version: str, format: str | Callable[[], str],
                  key: Path | None, valid_days: float, progress: Progress | None = None) -> dict[str, Any]:
    """A deploy's ``sha256`` and, with ``key``, its ``statement``: what this control plane downloaded and
    hashed itself is what it signs (a given ``--sha256`` must match those bytes). ``format`` may be
    asked for only once the bytes are known to be the ones named. ``progress``: the download."""
    if sha256 != "auto" and key is None:
        return {"sha256": sha256.lower()}
    digest = artifact_sha256(url, progress)
    if sha256 != "auto" and digest != sha256.lower():
        raise SystemExit(f"edge-agent: {redact_url(url)} does not hash to the --sha256 given; not signing it")
    fields: dict[str, Any] = {"sha256": digest}
    if key is not None:
        expires = int(time.time() + valid_days * 86_400)
        signed_format = format() if callable(format) else format
        fields["statement"] = sign_statement(load_private_key(key),
                                             Statement(name, version, signed_format, digest, expires))
    return fields


def valid_days_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--valid-days", type=float, default=STATEMENT_VALID_S / 86_400,
                        help="days the signed statement stays valid (default %(default)g)")


def _read_head(url: str) -> tuple[bytes, int | None] | str:
    """The artifact's first ``HEAD_BYTES`` and its size as this control plane sees it, or why it cannot."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            with path.open("rb") as stream:
                return stream.read(HEAD_BYTES), path.stat().st_size
        if parts.scheme in ("http", "https"):
            request = urllib.request.Request(url, headers={"Range": f"bytes=0-{HEAD_BYTES - 1}"})
            with urllib.request.urlopen(request, timeout=READ_TIMEOUT_S) as stream:
                # 206: Content-Range "bytes 0-65535/<size>"; a server without ranges sends it all (200)
                length = (stream.headers.get("Content-Range", "").rpartition("/")[2] if stream.status == 206
                          else stream.headers.get("Content-Length"))
                return stream.read(HEAD_BYTES), int(length) if length and length.isdigit() else None
    except (OSError, ValueError) as exc:
        return str(exc)
    return f"scheme {parts.scheme or 'none'}"


def artifact_format(url: str, given: str | None) -> str:
    """The deploy's format: taken from the artifact's content; a ``given`` one must not contradict it.

    An artifact this control plane cannot read (a path only the device has) goes by ``given``,
    else by its name's extension."""
    shown = redact_url(url)
    head = _read_head(url)
    if isinstance(head, str):
        by_name = given or FORMAT_BY_SUFFIX.get(PurePosixPath(urlsplit(url).path).suffix.lower())
        if by_name is None:
            fail(f"cannot read {shown} here ({head}) to tell its format; give --format", EXIT_USAGE)
        if given is None:
            print(f"edge-agent: cannot read {shown} here ({head}); sending it as {by_name}, by its name",
                  file=sys.stderr, flush=True)
        return by_name
    sniffed = sniff(*head)
    if given is None:
        if sniffed.format is None:
            fail(f"{shown} is {sniffed.description}; a deploy takes a tar bundle, an ONNX model or a "
                 "TensorRT engine (give --format to send it anyway)", EXIT_USAGE)
        return sniffed.format
    if sniffed.format is not None and sniffed.format != given:
        fail(f"--format {given}, but {shown} is {sniffed.description}: use --format {sniffed.format} "
             "or leave --format out", EXIT_USAGE)
    return given


def parse_agreement(text: str, what: str = "--min-agreement") -> float:
    """``"95%"`` or ``"0.95"`` -> 0.95; within [0, 1]."""
    if text.strip().endswith("%"):
        return parse_percent(text.strip(), what) / 100.0
    try:
        value = float(text)
    except ValueError:
        raise PlanError(f"{what} {text!r} is not a share like 0.95 or 95%") from None
    if not 0.0 <= value <= 1.0:
        raise PlanError(f"{what} {text!r} is outside [0, 1] (or 0%..100%)")
    return value


def shadow_terms(args: argparse.Namespace) -> dict[str, Any] | None:
    """A deploy's ``shadow`` object from ``--shadow DURATION`` and its companions; None without ``--shadow``."""
    if args.shadow is None:
        if args.min_agreement is not None or args.shadow_budget is not None:
            raise PlanError("--min-agreement and --shadow-budget need --shadow DURATION")
        return None
    terms: dict[str, Any] = {"duration_s": parse_duration(args.shadow, "--shadow")}
    if args.min_agreement is not None:
        terms["min_agreement"] = parse_agreement(args.min_agreement)
    if args.shadow_budget is not None:
        if args.shadow_budget < 1:
            raise PlanError(f"--shadow-budget {args.shadow_budget}: the candidate must see every n-th frame, n >= 1")
        terms["budget"] = args.shadow_budget
    return terms


def add_shadow_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shadow DURATION``, ``--min-agreement``, ``--shadow-budget`` (edge-agent deploy, fleet deploy)."""
    parser.add_argument("--shadow", metavar="DURATION",
                        help="run the new model beside the serving one on live frames for at most this long "
                             "(60s, 10m) and serve it only if it agrees; default terms: the agent's [deploy] shadow_*")
    parser.add_argument("--min-agreement", help="agreement to promote at, 0.95 or 95%% (with --shadow)")
    parser.add_argument("--shadow-budget", type=int, help="the candidate sees every n-th frame (with --shadow)")


def _outcome(reply: Reply) -> str:
    """One line for a person: what the device now serves, or why it refused."""
    payload = reply.payload
    if not payload.ok:
        error = payload.error
        return f"[{reply.device_id}] {payload.command} refused: " + (f"{error.code}: {error.message}" if error else "?")
    result = payload.result or {}
    if payload.command == "deploy" and result.get("shadow"):
        shadow = result["shadow"]
        return (f"[{reply.device_id}] agreed in shadow ({shadow.get('agreement')} over {shadow.get('frames')} "
                f"frames): now serving {result.get('name')} {result.get('version')} "
                f"(deployment {result.get('deployment_id')}, on probation)")
    if payload.command == "deploy":
        return (f"[{reply.device_id}] now serving {result.get('name')} {result.get('version')} "
                f"(deployment {result.get('deployment_id')}, on probation)")
    if payload.command == "rollback":
        return f"[{reply.device_id}] rolled back: now serving {result.get('name')} {result.get('version')}"
    return f"[{reply.device_id}] {payload.command}: ok"


def _send(args: argparse.Namespace, connection: Connection, name: str, body: dict[str, Any],
          on_progress: Callable[[str, DeploymentPayload], None] | None = None) -> list[Reply]:
    try:
        return asyncio.run(connection.client.send(
            name, body, device=connection.device, group=connection.group,
            expect=1 if connection.device else None, timeout_s=args.timeout, on_progress=on_progress))
    except NoReplyError as exc:
        fail(f"{exc}{silence_hint(connection)}")
    except ControlError as exc:
        fail(str(exc))


def _finish(replies: list[Reply], *, outcomes: bool = False) -> int:
    """The replies as JSON lines on stdout (and, for a person, one line each on stderr); the exit status."""
    failed = 0
    for reply in replies:
        payload = reply.payload
        if outcomes:
            print(_outcome(reply), file=sys.stderr, flush=True)
        print(json.dumps({"device": reply.device_id, **payload.model_dump(mode="json")}, sort_keys=True))
        failed += not payload.ok
    return EXIT_FAILURE if failed or not replies else EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        shadow = shadow_terms(args)
    except PlanError as exc:
        fail(str(exc), EXIT_USAGE)
    connection = connect(args)  # a missing agent is said before a large artifact is hashed
    command_id = new_command_id()
    statement = json.loads(args.statement.read_text(encoding="ascii")) if args.statement is not None else None
    signed_format = statement.get("format") if isinstance(statement, dict) else None
    if args.format and signed_format and args.format != signed_format:
        fail(f"--format {args.format}, but the statement is signed for {signed_format}", EXIT_USAGE)
    format_of = functools.cache(lambda: artifact_format(args.url, args.format or signed_format))
    body: dict[str, Any] = {"id": command_id, "name": args.name, "version": args.version, "url": args.url}
    with ProgressBoard() as board:
        if statement is not None:
            sha256 = statement.get("sha256") if args.sha256 == "auto" and isinstance(statement, dict) else args.sha256
            body.update(sha256=sha256, statement=statement)
        else:
            body.update(signed_fields(url=args.url, sha256=args.sha256, name=args.name, version=args.version,
                                      format=format_of, key=args.sign, valid_days=args.valid_days,
                                      progress=board.reporter()))
    body["format"] = format_of()
    if args.probation_window is not None:
        body["probation"] = {"window_s": args.probation_window, "max_error_rate": args.max_error_rate,
                             "max_latency_ratio": args.max_latency_ratio}
    if shadow is not None:
        body.update(mode="shadow", shadow=shadow)
        args.timeout += shadow["duration_s"]  # the reply comes when the shadow run ends

    with ProgressBoard() as board:
        def progress(device: str, status: DeploymentPayload) -> None:
            if status.deployment_id == command_id:  # the retained topic may hold an older deployment
                board.update(device, f"[{device}] {status.state:<11}", status.progress)

        replies = _send(args, connection, "deploy", body, progress)
    return _finish(replies, outcomes=True)


def cmd_rollback(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    if args.name:
        body["name"] = args.name
    return _finish(_send(args, connect(args), "rollback", body), outcomes=True)


def cmd_promote(args: argparse.Namespace) -> int:
    return _finish(_send(args, connect(args), "promote", {}), outcomes=True)


def cmd_status(args: argparse.Namespace) -> int:
    return _finish(_send(args, connect(args), "status", {}))


def cmd_ping(args: argparse.Namespace) -> int:
    return _finish(_send(args, connect(args), "ping", {}))


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for replies")


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
    deploy.add_argument("--format", choices=FORMATS,
                        help="default: what the artifact's content is (tar bundle, ONNX model, TensorRT engine)")
    deploy.add_argument("--probation-window", type=float, help="seconds of probation after the swap")
    deploy.add_argument("--max-error-rate", type=float, default=0.05)
    deploy.add_argument("--max-latency-ratio", type=float, default=1.5)
    add_shadow_arguments(deploy)
    deploy.set_defaults(handler=cmd_deploy)
    for name, handler, text in (("rollback", cmd_rollback, "swap back to the previous model"),
                                ("promote", cmd_promote, "serve the shadow run's candidate waiting for a promote"),
                                ("status", cmd_status, "ask for the device's status"),
                                ("ping", cmd_ping, "check that the device answers")):
        parser = sub.add_parser(name, help=text)
        _common(parser)
        if name == "rollback":
            parser.add_argument("--reason")
            parser.add_argument("--name", help="the model to roll back: the first stage (default) or a second "
                                "stage a camera names (text-rec)")
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
                          format=artifact_format(args.artifact.resolve().as_uri(), args.format),
                          valid_s=args.valid_days * 86_400)
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
    sign.add_argument("--format", choices=FORMATS, help="default: what the artifact's content is")
    valid_days_argument(sign)
    sign.set_defaults(handler=cmd_sign)
