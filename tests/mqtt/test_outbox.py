"""Outboxes: bounded FIFO, acknowledged prefix removal, oldest dropped when full; SQLite keeps
messages, drop count and sequence numbers across restarts, a full disk and a damaged file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from agent.mqtt.outbox import MemoryOutbox
from agent.mqtt.sqlite_outbox import SqliteOutbox
from tests.support.agentproc import REPO, AgentProcess, agent_config
from tests.support.tmpfs import fill, small_tmpfs


def filled(capacity: int, count: int) -> MemoryOutbox:
    outbox = MemoryOutbox(capacity)
    for n in range(1, count + 1):
        outbox.put("t", str(n).encode(), 1)
    return outbox


def test_peek_returns_the_oldest_in_order_without_removing():
    outbox = filled(10, 4)
    batch = outbox.peek_batch(3)
    assert [item.payload for item in batch] == [b"1", b"2", b"3"]
    assert outbox.depth == 4


def test_ack_removes_everything_up_to_the_key():
    outbox = filled(10, 4)
    outbox.ack(outbox.peek_batch(2)[-1].key)
    assert [item.payload for item in outbox.peek_batch(10)] == [b"3", b"4"]


def test_overflow_drops_the_oldest_and_counts_them():
    outbox = filled(3, 5)
    assert outbox.dropped == 2
    assert [item.payload for item in outbox.peek_batch(10)] == [b"3", b"4", b"5"]


def test_ack_of_a_batch_partly_dropped_meanwhile_removes_only_what_was_sent():
    outbox = filled(3, 3)
    batch = outbox.peek_batch(3)
    outbox.put("t", b"4", 1)
    outbox.put("t", b"5", 1)
    outbox.ack(batch[-1].key)
    assert [item.payload for item in outbox.peek_batch(10)] == [b"4", b"5"]


def test_zero_capacity_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        MemoryOutbox(0)


# --- SqliteOutbox ---------------------------------------------------------------------------


class Clock:
    """A settable clock for the age bound."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sqlite_filled(path: Path, capacity: int, count: int, **options: object) -> SqliteOutbox:
    outbox = SqliteOutbox(path, capacity, **options)  # type: ignore[arg-type]
    for n in range(1, count + 1):
        outbox.put("t", str(n).encode(), 1)
    return outbox


def payloads(outbox: SqliteOutbox | MemoryOutbox) -> list[bytes]:
    return [item.payload for item in outbox.peek_batch(1000)]


def test_sqlite_outbox_behaves_like_the_memory_one(tmp_path: Path):
    outbox = sqlite_filled(tmp_path / "outbox.db", 3, 3)
    batch = outbox.peek_batch(3)
    assert [item.payload for item in batch] == [b"1", b"2", b"3"]
    outbox.put("t", b"4", 1)
    outbox.put("t", b"5", 1)
    assert outbox.dropped == 2
    outbox.ack(batch[-1].key)
    assert payloads(outbox) == [b"4", b"5"]
    assert outbox.depth == 2


def test_sqlite_outbox_keeps_messages_byte_for_byte_and_drop_count_across_a_reopen(tmp_path):
    path = tmp_path / "state" / "outbox.db"
    first = sqlite_filled(path, 4, 6)
    first.put("edge/dev1/events", b'{"seq":7,"ts":1.5}', 0)
    first.close()
    again = SqliteOutbox(path, 4)
    assert (again.depth, again.dropped) == (4, 3)
    items = again.peek_batch(10)
    last = items[-1]
    assert (last.topic, last.payload, last.qos) == ("edge/dev1/events", b'{"seq":7,"ts":1.5}', 0)
    assert [i.payload for i in items[:3]] == [b"4", b"5", b"6"]


def test_a_killed_writer_loses_nothing_it_put(tmp_path: Path):
    path = tmp_path / "outbox.db"
    sqlite_filled(path, 100, 10)  # never closed: as if the process had been killed
    assert payloads(SqliteOutbox(path, 100)) == [str(n).encode() for n in range(1, 11)]


def test_keys_are_never_reused_even_after_the_outbox_was_emptied_and_reopened(tmp_path: Path):
    path = tmp_path / "outbox.db"
    outbox = sqlite_filled(path, 10, 3)
    last = outbox.peek_batch(10)[-1].key
    outbox.ack(last)
    assert outbox.depth == 0
    outbox.close()
    again = SqliteOutbox(path, 10)
    again.put("t", b"new", 1)
    again.ack(last)  # a late ack of the old batch must not remove the new message
    assert payloads(again) == [b"new"]
    assert again.peek_batch(1)[0].key > last


def test_messages_older_than_the_age_bound_are_dropped_and_counted(tmp_path: Path):
    clock = Clock()
    outbox = SqliteOutbox(tmp_path / "outbox.db", 100, max_age_s=60.0, clock=clock)
    outbox.put("t", b"old", 1)
    clock.now += 30
    outbox.put("t", b"younger", 1)
    clock.now += 31
    assert payloads(outbox) == [b"younger"]
    assert (outbox.depth, outbox.dropped) == (1, 1)
    clock.now += 3600
    outbox.close()
    reopened = SqliteOutbox(tmp_path / "outbox.db", 100, max_age_s=60.0, clock=clock)
    assert (reopened.depth, reopened.dropped) == (0, 2)


def test_sequence_numbers_continue_after_a_restart(tmp_path: Path):
    path = tmp_path / "outbox.db"
    outbox = SqliteOutbox(path, 100)
    sequencer = outbox.sequencer()
    for _ in range(3):
        outbox.put("edge/dev1/events", str(sequencer.next("events")).encode(), 1)
    outbox.put("edge/dev1/telemetry/health", str(sequencer.next("telemetry/health")).encode(), 1)
    outbox.close()
    restored = SqliteOutbox(path, 100).sequencer()
    assert restored.next("events") == 4
    assert restored.next("telemetry/health") == 2
    assert restored.next("reply") == 1


def test_a_number_whose_message_never_reached_the_outbox_is_not_saved(tmp_path: Path):
    path = tmp_path / "outbox.db"
    outbox = SqliteOutbox(path, 100)
    sequencer = outbox.sequencer()
    outbox.put("t", str(sequencer.next("events")).encode(), 1)
    sequencer.next("events")  # killed before its message was put: no gap after the restart
    assert SqliteOutbox(path, 100).sequencer().next("events") == 2


def test_numbers_of_retained_topics_are_saved_at_once(tmp_path: Path):
    path = tmp_path / "outbox.db"
    sequencer = SqliteOutbox(path, 100).sequencer(immediate={"status"})
    assert [sequencer.next("status") for _ in range(2)] == [1, 2]
    assert SqliteOutbox(path, 100).sequencer().next("status") == 3


def test_an_unreadable_database_is_moved_aside_and_a_new_one_started(tmp_path: Path):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a sqlite database, it was damaged" * 100)
    with structlog.testing.capture_logs() as events:
        outbox = SqliteOutbox(path, 10)
    outbox.put("t", b"1", 1)
    assert payloads(outbox) == [b"1"]
    assert [p.name for p in tmp_path.glob("outbox.db.corrupt-*")]
    assert "mqtt_outbox_unreadable" in [e["event"] for e in events]


def test_a_full_disk_keeps_messages_in_memory_and_writes_them_when_space_returns(tmp_path: Path):
    with small_tmpfs(tmp_path / "small", 1) as disk:
        outbox = SqliteOutbox(disk / "outbox.db", 10_000)
        sequencer = outbox.sequencer()
        filler = fill(disk / "filler")
        with structlog.testing.capture_logs() as events:
            put = 0
            while outbox.state == "disk":
                outbox.put("t", (str(sequencer.next("events")) + "x" * 4000).encode(), 1)
                put += 1
            for _ in range(20):
                outbox.put("t", (str(sequencer.next("events")) + "x" * 4000).encode(), 1)
            put += 20
            assert "mqtt_outbox_write_failed" in [e["event"] for e in events]
            assert (outbox.depth, outbox.dropped) == (put, 0)
            waiting = payloads(outbox)
            assert [int(p.rstrip(b"x")) for p in waiting] == list(range(1, put + 1))
            filler.unlink()
            outbox.put("t", b"after", 1)
            assert "mqtt_outbox_recovered" in [e["event"] for e in events]
        assert outbox.state == "disk"
        outbox.close()
        reopened = SqliteOutbox(disk / "outbox.db", 10_000)
        assert (reopened.depth, reopened.dropped) == (put + 1, 0)
        assert payloads(reopened) == [*waiting, b"after"]


def test_on_a_full_disk_the_queue_still_goes_out_in_order_and_is_never_sent_twice(tmp_path: Path):
    with small_tmpfs(tmp_path / "small", 1) as disk:
        outbox = sqlite_filled(disk / "outbox.db", 10_000, 20)
        filler = fill(disk / "filler")
        while outbox.state == "disk":
            outbox.put("t", b"x" * 4000, 1)
        outbox.put("t", b"in memory", 1)
        batch = outbox.peek_batch(10)
        assert [item.payload for item in batch] == [str(n).encode() for n in range(1, 11)]
        outbox.ack(batch[-1].key)  # the database cannot delete them now
        rest = payloads(outbox)
        assert rest[:10] == [str(n).encode() for n in range(11, 21)] and rest[-1] == b"in memory"
        outbox.ack(outbox.peek_batch(1000)[-1].key)
        assert payloads(outbox) == []
        filler.unlink()
        outbox.put("t", b"after", 1)
        outbox.close()
        assert payloads(SqliteOutbox(disk / "outbox.db", 10_000)) == [b"after"]


def test_messages_in_memory_are_bounded_and_what_was_dropped_is_counted(tmp_path: Path):
    with small_tmpfs(tmp_path / "small", 1) as disk:
        outbox = SqliteOutbox(disk / "outbox.db", 5)
        filler = fill(disk / "filler")
        while outbox.state == "disk":
            outbox.put("t", b"x" * 4000, 1)
        before, on_disk = outbox.dropped, outbox.depth - 1
        for n in range(7):
            outbox.put("t", b"%d" % n, 1)
        assert outbox.depth == on_disk + 5  # the database's bound and memory's
        assert outbox.dropped == before + 3
        filler.unlink()
        outbox.close()  # what waited in memory goes to the database at the end
        reopened = SqliteOutbox(disk / "outbox.db", 5)
        assert payloads(reopened)[-5:] == [b"2", b"3", b"4", b"5", b"6"]
        assert reopened.dropped == before + 3 + on_disk  # the database's bound applies again


def test_a_database_that_cannot_be_written_is_not_set_aside_and_start_up_goes_on(tmp_path: Path):
    """A file-size limit stands in for a full disk: the process cannot grow any file."""
    path = tmp_path / "outbox.db"
    healthy = sqlite_filled(path, 1000, 200)
    healthy.close()
    script = f"""
import json, resource, sys
from pathlib import Path
from agent.mqtt import sqlite_outbox as module
module.REOPEN_INTERVAL_S = 0.0  # try the database again at the next put
limit = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))
outbox = module.SqliteOutbox(Path({str(path)!r}), 1000)
outbox.put("t", b"while full", 1)
print("RESULT", json.dumps({{"depth": outbox.depth, "state": outbox.state,
                  "first": outbox.peek_batch(1)[0].payload.decode(),
                  "last": outbox.peek_batch(1000)[-1].payload.decode()}}))
resource.setrlimit(resource.RLIMIT_FSIZE, limit)
outbox.put("t", b"space again", 1)
print("RESULT", json.dumps({{"depth": outbox.depth, "state": outbox.state,
                  "first": outbox.peek_batch(1)[0].payload.decode(),
                  "last": outbox.peek_batch(1000)[-1].payload.decode()}}))
outbox.close()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    result = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, run.stdout
    # The queue on disk cannot be opened for writing (WAL needs its -wal and -shm files): it
    # stays as it is for a later open, and new messages wait in memory.
    assert json.loads(result[0].removeprefix("RESULT ")) == {
        "depth": 1, "state": "memory", "first": "while full", "last": "while full"}
    assert "mqtt_outbox_unavailable" in run.stdout and "mqtt_outbox_unreadable" not in run.stdout
    assert not list(tmp_path.glob("outbox.db.corrupt-*"))
    # Once files may grow again the next put opens it: the old queue first, then what waited.
    assert json.loads(result[1].removeprefix("RESULT ")) == {
        "depth": 202, "state": "disk", "first": "1", "last": "space again"}
    assert payloads(SqliteOutbox(path, 1000)) == [
        *(str(n).encode() for n in range(1, 201)), b"while full", b"space again"]


@pytest.mark.parametrize("damage", [b"this is not a sqlite database, it was damaged" * 100, None],
                         ids=["not-a-database", "malformed"])
def test_only_damage_counts_as_corruption(tmp_path: Path, damage: bytes | None):
    path = tmp_path / "outbox.db"
    sqlite_filled(path, 1000, 50).close()
    if damage is None:  # keep the header, scramble the pages behind it
        data = bytearray(path.read_bytes())
        data[100:] = bytes(len(data) - 100)
        path.write_bytes(bytes(data[:4096]) + b"\x0d" * (len(data) - 4096))
    else:
        path.write_bytes(damage)
    outbox = SqliteOutbox(path, 10)
    assert outbox.state == "disk" and list(tmp_path.glob("outbox.db.corrupt-*"))


@pytest.mark.parametrize("bad", [{"max_messages": 0}, {"max_age_s": 0.0}])
def test_sqlite_outbox_bounds_must_be_positive(tmp_path: Path, bad: dict[str, float]):
    options = {"max_messages": 10, "max_age_s": 60.0, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        SqliteOutbox(tmp_path / "outbox.db", **options)  # type: ignore[arg-type]


@pytest.mark.slow
def test_an_agent_whose_state_disk_is_full_starts_answers_and_reports_its_outbox_in_memory(
    tmp_path: Path, demo_dir: Path, mosquitto, mqtt_probe
):
    with small_tmpfs(tmp_path / "state", 1) as state:
        fill(state / "filler")
        config = agent_config(tmp_path, demo_dir, mosquitto.url)
        probe = mqtt_probe(mosquitto.port, ["edge/dev1/telemetry/health", "edge/dev1/reply"])
        agent = AgentProcess(config)
        try:
            probe.wait_for(lambda m: m.topic == "edge/dev1/telemetry/health"
                           and json.loads(m.payload)["outbox_state"] == "memory",
                           timeout=90, what="health saying the outbox is in memory")
            probe.publish("edge/dev1/cmd/ping", b'{"id": "full-disk"}')
            probe.wait_for(lambda m: m.topic == "edge/dev1/reply"
                           and json.loads(m.payload)["id"] == "full-disk", what="the ping's reply")
        finally:
            code = agent.terminate()
        assert code == 0, agent.log()[-3000:]
        assert not list(state.glob("outbox.sqlite3.corrupt-*"))
