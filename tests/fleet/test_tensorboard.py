"""TensorBoard event files written by hand: read back with protobuf's own parser, checksums verified."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from agent.fleet.tensorboard import EventFileWriter, RecordError, crc32c, read_records


def event_class() -> type:
    """tensorflow.Event and Summary, declared here from the field numbers of TensorFlow's .proto files."""
    proto = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tftest")
    field = descriptor_pb2.FieldDescriptorProto
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=field.TYPE_FLOAT, label=field.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=field.TYPE_MESSAGE, type_name=".tftest.Value",
                      label=field.LABEL_REPEATED)
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=field.TYPE_MESSAGE, type_name=".tftest.Summary",
                    label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tftest.Event"))


def read_scalars(path: Path) -> tuple[str, list[tuple[str, int, float]]]:
    Event = event_class()
    records = [Event.FromString(data) for data in read_records(path)]
    scalars = [(v.tag, e.step, v.simple_value) for e in records[1:] for v in e.summary.value]
    return records[0].file_version, scalars


def test_crc32c_matches_the_castagnoli_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_scalars_read_back_with_their_steps(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path / "cam-1", ".test")
    writer.scalar("latency/end_to_end_p95_ms", 41.25, step=7, wall_time=1_800_000_000.5)
    writer.scalar("fps", 14.5, step=7)
    writer.scalar("drift/score", 0.125, step=8)
    writer.close()
    version, scalars = read_scalars(writer.path)
    assert version == "brain.Event:2"
    assert scalars == [("latency/end_to_end_p95_ms", 7, 41.25), ("fps", 7, 14.5), ("drift/score", 8, 0.125)]
    assert writer.path.name.startswith("events.out.tfevents.") and writer.path.name.endswith(".test")


def test_a_damaged_record_is_detected(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path, "")
    writer.scalar("fps", 1.0, step=1)
    writer.close()
    data = bytearray(writer.path.read_bytes())
    data[-6] ^= 0xFF
    writer.path.write_bytes(bytes(data))
    with pytest.raises(RecordError, match="checksum"):
        list(read_records(writer.path))
    writer.path.write_bytes(bytes(data[:-3]))
    with pytest.raises(RecordError, match="truncated"):
        list(read_records(writer.path))
    assert struct.calcsize("<Q") == 8
