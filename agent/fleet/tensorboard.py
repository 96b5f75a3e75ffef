"""TensorBoard scalars written directly in the event file format: no TensorFlow, no tensorboardX.

An event file is a sequence of TFRecords: ``uint64 length``, ``uint32
masked_crc32c(length)``, the data, ``uint32 masked_crc32c(data)``, all little
endian. Each record is a serialized ``tensorflow.Event`` protocol buffer; the
first carries ``file_version = "brain.Event:2"``, the others a ``Summary`` with
one ``simple_value`` per tag. The few protobuf fields needed are encoded here
by hand (field numbers from tensorflow/core/util/event.proto and
tensorflow/core/framework/summary.proto).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agent.fleet.errors import FleetError

__all__ = [
    "FILE_VERSION",
    "EventFileWriter",
    "RecordError",
    "crc32c",
    "encode_scalar_event",
    "masked_crc32c",
    "read_records",
]

FILE_VERSION = "brain.Event:2"
CRC_MASK_DELTA = 0xA282EAD8
CRC32C_POLYNOMIAL = 0x82F63B78
"""Castagnoli, reflected."""

# Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5 (Summary).
EVENT_WALL_TIME = (1 << 3) | 1
EVENT_STEP = (2 << 3) | 0
EVENT_FILE_VERSION = (3 << 3) | 2
EVENT_SUMMARY = (5 << 3) | 2
# Summary: value = 1 (repeated Value). Value: tag = 1 (string), simple_value = 2 (float).
SUMMARY_VALUE = (1 << 3) | 2
VALUE_TAG = (1 << 3) | 2
VALUE_SIMPLE = (2 << 3) | 5


class RecordError(FleetError, ValueError):
    """An event file record is truncated or fails its checksum."""


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return _varint(tag) + _varint(len(payload)) + payload


def encode_header_event(wall_time: float) -> bytes:
    return (_varint(EVENT_WALL_TIME) + struct.pack("<d", wall_time)
            + _length_delimited(EVENT_FILE_VERSION, FILE_VERSION.encode()))


def encode_scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    summary_value = _length_delimited(VALUE_TAG, tag.encode()) + _varint(VALUE_SIMPLE) + struct.pack("<f", value)
    summary = _length_delimited(SUMMARY_VALUE, summary_value)
    return (_varint(EVENT_WALL_TIME) + struct.pack("<d", wall_time) + _varint(EVENT_STEP) + _varint(step)
            + _length_delimited(EVENT_SUMMARY, summary))


def frame_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def read_records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, checksums checked."""
    with path.open("rb") as handle:
        while True:
            header = handle.read(8)
            if not header:
                return
            if len(header) < 8:
                raise RecordError(f"{path}: truncated record header")
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", _exactly(handle, 4, path))
            if header_crc != masked_crc32c(header):
                raise RecordError(f"{path}: record length checksum mismatch")
            data = _exactly(handle, length, path)
            (data_crc,) = struct.unpack("<I", _exactly(handle, 4, path))
            if data_crc != masked_crc32c(data):
                raise RecordError(f"{path}: record data checksum mismatch")
            yield data


def _exactly(handle: BinaryIO, size: int, path: Path) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise RecordError(f"{path}: truncated record")
    return data


class EventFileWriter:
    """One ``events.out.tfevents.<time>.<host>.<pid>`` file in ``logdir``, appended to and flushed on demand.

    Several writers (consumers sharing the load) may write into one run folder:
    TensorBoard reads every event file of a run.
    """

    def __init__(self, logdir: Path, suffix: str = "") -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}{suffix}"
        self.path = logdir / name
        self._handle = self.path.open("ab")
        self._handle.write(frame_record(encode_header_event(now)))

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        event = encode_scalar_event(tag, value, step, time.time() if wall_time is None else wall_time)
        self._handle.write(frame_record(event))

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
