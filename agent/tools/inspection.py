"""Look into a bundle without unpacking it: manifest summary, files with sizes and hashes, signature.

Every member's sha256 is checked against the manifest's ``files``; a member the
manifest does not list, a listed file that is missing, an unsafe member (path
escaping, link) and, with a public key, a signature that does not verify are
problems, and a bundle with problems is not fit to deploy.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from agent.models import MANIFEST_FILE, FetchError, Manifest, load_public_key, verify_statement
from agent.tools.errors import PackError
from agent.tools.pack import signature_path

__all__ = ["BundleInspection", "Member", "format_inspection", "inspect_bundle"]

CHUNK = 1 << 20
Status = Literal["ok", "mismatch", "unlisted"]
SignatureState = Literal["valid", "invalid", "missing", "not checked"]


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str
    status: Status


@dataclass(frozen=True)
class BundleInspection:
    path: Path
    size: int
    sha256: str
    manifest: Manifest | None
    members: tuple[Member, ...]
    problems: tuple[str, ...]
    signature: SignatureState

    @property
    def ok(self) -> bool:
        return not self.problems


def _digest(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise PackError(f"{path}: not a tar bundle: {exc}") from exc


def _read_members(path: Path) -> tuple[dict[str, tuple[int, str]], bytes | None, list[str]]:
    """(name -> (size, sha256)), the manifest's bytes, and problems found on the way."""
    problems: list[str] = []
    found: dict[str, tuple[int, str]] = {}
    manifest_bytes = None
    with _open_tar(path) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            if member.isdir():
                continue
            if name.startswith("/") or ".." in Path(name).parts or not member.isfile():
                problems.append(f"{member.name}: unsafe member (absolute path, '..' or not a plain file)")
                continue
            source = archive.extractfile(member)
            if source is None:
                problems.append(f"{name}: cannot be read")
                continue
            with source:
                if name == MANIFEST_FILE:
                    manifest_bytes = source.read()
                    found[name] = (len(manifest_bytes), hashlib.sha256(manifest_bytes).hexdigest())
                else:
                    found[name] = (member.size, _digest(source))
    return found, manifest_bytes, problems


def _signature(path: Path, manifest: Manifest | None, public_key: Path | None,
               signature: Path | None) -> tuple[SignatureState, str | None]:
    """The signed statement beside the bundle must verify and name this bundle: its manifest and sha256."""
    if public_key is None:
        return "not checked", None
    sig_path = signature or signature_path(path)
    if not sig_path.is_file():
        return "missing", f"no signature file {sig_path.name} beside the bundle"
    try:
        signed = json.loads(sig_path.read_text(encoding="ascii"))
    except (ValueError, UnicodeDecodeError):
        return "invalid", f"signature: {sig_path.name} is not a signed statement (JSON)"
    if not isinstance(signed, dict):
        return "invalid", f"signature: {sig_path.name} is not a signed statement (JSON object)"
    with path.open("rb") as handle:
        sha256 = _digest(handle)
    try:
        verify_statement(load_public_key(public_key), signed, name=manifest.name if manifest else "",
                         version=manifest.version if manifest else "", format="bundle", sha256=sha256)
    except FetchError as exc:
        return "invalid", f"signature: {exc.message}"
    return "valid", None


def inspect_bundle(path: Path, *, public_key: Path | None = None,
                   signature: Path | None = None) -> BundleInspection:
    """Read ``path`` member by member and check it against its manifest (and signature)."""
    if not path.is_file():
        raise PackError(f"{path}: no such bundle")
    found, manifest_bytes, problems = _read_members(path)
    manifest = None
    if manifest_bytes is None:
        problems.append(f"no {MANIFEST_FILE}")
    else:
        try:
            manifest = Manifest.model_validate_json(manifest_bytes)
        except ValueError as exc:
            problems.append(f"{MANIFEST_FILE}: invalid: {str(exc).splitlines()[0]}")
    listed = manifest.files if manifest is not None else {}
    members = []
    for name, (size, digest) in sorted(found.items()):
        if name == MANIFEST_FILE:
            status: Status = "ok"
        elif name not in listed:
            status = "unlisted"
            problems.append(f"{name}: in the bundle but not in the manifest")
        elif listed[name] != digest:
            status = "mismatch"
            problems.append(f"{name}: sha256 {digest[:12]}... does not match the manifest's {listed[name][:12]}...")
        else:
            status = "ok"
        members.append(Member(name, size, digest, status))
    problems += [f"{name}: listed in the manifest but missing" for name in sorted(set(listed) - set(found))]
    if manifest is not None and manifest.model_file not in found:
        problems.append(f"the model file {manifest.model_file!r} is missing")
    state, problem = _signature(path, manifest, public_key, signature)
    if problem is not None:
        problems.append(problem)
    with path.open("rb") as handle:
        bundle_sha = _digest(handle)
    return BundleInspection(path, path.stat().st_size, bundle_sha, manifest, tuple(members), tuple(problems), state)


def format_inspection(result: BundleInspection) -> str:
    lines = [f"{result.path}: {result.size} bytes, sha256 {result.sha256}"]
    manifest = result.manifest
    if manifest is not None:
        pre, head = manifest.preprocess, manifest.head
        size = f"{pre.height}x{pre.width}" if pre.height and pre.width else f"multiple of {pre.multiple}"
        lines += [
            f"model: {manifest.name} {manifest.version} ({manifest.task}, {manifest.format}, {manifest.model_file})",
            f"input: {pre.resize} {size}, {pre.color}, {pre.layout}, mean {list(pre.mean)}, std {list(pre.std)}",
            f"head: {head.kind}, labels {list(head.labels) or '-'}",
            f"goldens: {len(manifest.golden)}; reference statistics: {'yes' if manifest.reference else 'no'}",
        ]
        if manifest.source:
            lines.append(f"source: {manifest.source}")
    lines.append("files:")
    for member in result.members:
        lines.append(f"  {member.status:<8} {member.size:>10}  {member.sha256[:16]}  {member.name}")
    lines.append(f"signature: {result.signature}")
    if result.ok:
        lines.append("hashes: all files match the manifest")
    else:
        lines += ["PROBLEMS:"] + [f"  {problem}" for problem in result.problems]
    return "\n".join(lines)
