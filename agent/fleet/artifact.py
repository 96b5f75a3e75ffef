"""What an artifact is, from its first bytes: a tar bundle, an ONNX model or a serialized TensorRT engine.

The control plane sends a deploy's ``format`` with the artifact's URL; the agent
unpacks, stages or loads it by that word. ``sniff(head, size)`` reads the
artifact's content so the word can be left out, and so a wrong one is refused
with what the file really is. Pure: bytes in, a verdict out.

- tar: the POSIX ``ustar`` magic at offset 257, also inside gzip, bzip2 or xz
  (agent.models.bundle opens ``r:*``);
- ONNX: a protobuf ``ModelProto`` whose first field is ``ir_version`` (field 1,
  varint; serializers write fields in number order) and whose top-level fields
  all have ModelProto's wire types, up to ``graph`` (field 7) or the end of what
  was read, each within the file's size;
- TensorRT: the plan's ``ftrt`` magic at offset 0.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from dataclasses import dataclass
from typing import Literal

__all__ = ["FORMATS", "HEAD_BYTES", "Format", "Sniffed", "sniff"]

Format = Literal["bundle", "onnx", "engine"]
FORMATS: tuple[Format, ...] = ("bundle", "onnx", "engine")
HEAD_BYTES = 64 * 1024
"""Read this much of an artifact to tell its format: a tar header, an ONNX model's fields up to its graph."""

TAR_MAGIC_OFFSET = 257
TAR_MAGIC = b"ustar"
TAR_HEADER_BYTES = 512
TENSORRT_MAGIC = b"ftrt"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZIP_MAGIC = b"PK\x03\x04"
ONNX_IR_VERSION, ONNX_GRAPH = 1, 7
ONNX_VARINT_FIELDS = frozenset({1, 5})
"""``ir_version``, ``model_version``; every other ModelProto field is length-delimited."""
MAX_IR_VERSION = 64
"""ONNX IR versions are small integers (11 in 2025); a larger first varint is not ONNX."""
VARINT, LENGTH_DELIMITED = 0, 2
SHOWN_BYTES = 8
TEXT_SAMPLE = 160
"""Bytes looked at to call an artifact text (an HTML error page served instead of the model)."""
TEXT_SHOWN = 40
PRINTABLE_LOW, PRINTABLE_HIGH = 0x20, 0x7F


@dataclass(frozen=True)
class Sniffed:
    """The verdict: ``format`` None when the bytes are none of the three; ``description`` says what they are."""

    format: Format | None
    description: str


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None


def _onnx_ir_version(head: bytes, size: int | None) -> int | None:
    """The IR version when ``head`` reads as the start of a ModelProto that fits in ``size``, else None."""
    cut = size > len(head) if size is not None else len(head) >= HEAD_BYTES  # a field may run past the head
    end = size if size is not None else (None if cut else len(head))
    pos, ir_version = 0, None
    while pos < len(head):
        tag = _varint(head, pos)
        value = None if tag is None else _varint(head, tag[1])
        if tag is None or value is None:  # a field cut by the end of the head
            return ir_version if cut else None
        (key, _), (number_value, pos) = tag, value
        number, wire = key >> 3, key & 7
        if (number != ONNX_IR_VERSION) == (ir_version is None):  # ir_version first, once
            return None
        if wire != (VARINT if number in ONNX_VARINT_FIELDS else LENGTH_DELIMITED):
            return None
        if number == ONNX_IR_VERSION:
            if not 0 < number_value <= MAX_IR_VERSION:
                return None
            ir_version = number_value
        elif wire == LENGTH_DELIMITED:
            if end is not None and pos + number_value > end:
                return None
            if number == ONNX_GRAPH:
                return ir_version
            pos += number_value
    return ir_version if cut else None  # a whole ModelProto without a graph is no model


def _decompressed(head: bytes) -> tuple[str, bytes] | None:
    """``(compression, first bytes)`` of gzip, bzip2 or xz data, else None."""
    try:
        if head.startswith(GZIP_MAGIC):
            return "gzip", zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, TAR_HEADER_BYTES)
        if head.startswith(BZIP2_MAGIC):
            return "bzip2", bz2.BZ2Decompressor().decompress(head, TAR_HEADER_BYTES)
        if head.startswith(XZ_MAGIC):
            return "xz", lzma.LZMADecompressor().decompress(head, TAR_HEADER_BYTES)
    except (zlib.error, OSError, lzma.LZMAError, EOFError):
        return None
    return None


def _is_tar(data: bytes) -> bool:
    return data[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC


def _unknown(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(ZIP_MAGIC):
        return "a zip archive (a bundle is a tar; a PyTorch checkpoint is a zip: export it to ONNX first)"
    sample = head[:TEXT_SAMPLE]
    if all(PRINTABLE_LOW <= byte < PRINTABLE_HIGH or byte in b"\t\r\n" for byte in sample):
        return f"text, not a model (it starts {' '.join(sample.decode('ascii').split())[:TEXT_SHOWN]!r})"
    return f"neither a tar bundle, an ONNX model nor a TensorRT engine (it starts {head[:SHOWN_BYTES].hex(' ')})"


def sniff(head: bytes, size: int | None = None) -> Sniffed:
    """What the artifact whose first bytes are ``head`` (``size`` bytes in all, when known) is."""
    if _is_tar(head):
        return Sniffed("bundle", "a tar archive (a bundle)")
    compressed = _decompressed(head)
    if compressed is not None:
        kind, inner = compressed
        if _is_tar(inner):
            return Sniffed("bundle", f"a {kind}-compressed tar archive (a bundle)")
        return Sniffed(None, f"{kind}-compressed data that is not a tar archive")
    if head.startswith(TENSORRT_MAGIC):
        return Sniffed("engine", "a serialized TensorRT engine")
    ir_version = _onnx_ir_version(head, size)
    if ir_version is not None:
        return Sniffed("onnx", f"an ONNX model (IR version {ir_version})")
    return Sniffed(None, _unknown(head))
