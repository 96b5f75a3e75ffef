"""Gaps in the per-topic sequence numbers of each device, also when consumers share the stream.

Every payload carries ``seq``, +1 per message of a topic (docs/mqtt.md). One
consumer alone sees every message of a topic in order, so a jump is a loss. With
a shared subscription the broker deals the messages out among the consumers
(mosquitto round-robin, per message), so each one sees only part of every
stream: the consumers tell each other which numbers they saw (``Digest``, over
the broker), each merges them all into its ``SeqTracker``, and a number still
missing ``grace_s`` after a later one arrived is a gap. ``Membership`` decides
which consumer reports the gaps of which device (rendezvous hashing over the
consumers heard from recently), so that each gap is counted once.

Pure: the clock is passed in; no I/O.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

__all__ = [
    "GAP_GRACE_S",
    "MAX_MEMBERS",
    "MEMBER_TTL_S",
    "Digest",
    "Gap",
    "Membership",
    "SeqTracker",
]

GAP_GRACE_S = 3.0
"""How long a missing number may be late (another consumer's digest, reordering) before it is a gap."""
MEMBER_TTL_S = 6.0
"""A consumer not heard from for this long is no longer a member."""
MAX_MEMBERS = 64
"""Consumers of one share group counted at once, this one included. A share group of a few dozen
instances already carries thousands of devices (docs/fleet.md); beyond the bound, digests come
from a client flooding the digest topics, and every member it adds would take over the gaps of
devices it never reports."""

Key = tuple[str, str]
"""(device id, topic suffix)."""


@dataclass(frozen=True)
class Gap:
    device_id: str
    suffix: str
    first: int
    last: int

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


@dataclass
class _Stream:
    first_at: float
    floor: int | None = None
    """Every number up to here is settled: seen, or declared missing."""
    pending: dict[int, float] = field(default_factory=dict)
    """Numbers above the floor that arrived, with when they arrived."""


class SeqTracker:
    """Numbers seen per (device, suffix); ``check()`` turns long-missing numbers into gaps."""

    def __init__(self, grace_s: float = GAP_GRACE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self.streams: dict[Key, _Stream] = {}
        self.duplicates = 0
        """Numbers seen twice (at-least-once delivery)."""
        self.stale = 0
        """Numbers at or below the settled point: redelivered, or late after their gap was declared."""
        self.restarts = 0
        """Streams that began again at 1 (the device restarted without its counters)."""

    def see(self, device_id: str, suffix: str, seq: int) -> bool:
        """Record one number; False for a duplicate or a stale one."""
        key = (device_id, suffix)
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(first_at=self.clock())
        elif seq == 1 and stream.floor is not None and stream.floor >= 1:
            self.restarts += 1
            stream = self.streams[key] = _Stream(first_at=self.clock(), floor=0)
        if stream.floor is not None and seq <= stream.floor:
            self.stale += 1
            return False
        if seq in stream.pending:
            self.duplicates += 1
            return False
        stream.pending[seq] = self.clock()
        self._advance(stream)
        return True

    @staticmethod
    def _advance(stream: _Stream) -> None:
        if stream.floor is None:
            return
        while stream.floor + 1 in stream.pending:
            del stream.pending[stream.floor + 1]
            stream.floor += 1

    def check(self) -> list[Gap]:
        """The gaps that are now certain; each is reported once."""
        now = self.clock()
        gaps: list[Gap] = []
        for (device, suffix), stream in self.streams.items():
            if stream.floor is None:
                if now - stream.first_at < self.grace_s or not stream.pending:
                    continue
                stream.floor = min(stream.pending) - 1
                self._advance(stream)
            while stream.pending:
                low = min(stream.pending)
                if now - stream.pending[low] < self.grace_s:
                    break
                gaps.append(Gap(device, suffix, stream.floor + 1, low - 1))
                stream.floor = low - 1
                self._advance(stream)
        return gaps


class Membership:
    """The consumers of one share group, as heard through their digests."""

    def __init__(self, instance_id: str, ttl_s: float = MEMBER_TTL_S,
                 clock: Callable[[], float] = time.monotonic, max_members: int = MAX_MEMBERS) -> None:
        self.instance_id = instance_id
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_members = max_members
        self._heard: dict[str, float] = {}
        self.refused = 0
        """Digests of new consumers that found the group full (``max_members``)."""

    def heard(self, instance_id: str) -> bool:
        """Record a digest of ``instance_id``; False (and counted) when it would be a member past the bound."""
        now = self.clock()
        if instance_id not in self._heard:
            self._heard = {m: at for m, at in self._heard.items() if now - at <= self.ttl_s}
            if len(self._heard) + 1 >= self.max_members:
                self.refused += 1
                return False
        self._heard[instance_id] = now
        return True

    def members(self) -> list[str]:
        now = self.clock()
        alive = {m for m, at in self._heard.items() if now - at <= self.ttl_s}
        return sorted(alive | {self.instance_id})

    def owner(self, device_id: str) -> str:
        """The member that reports this device's gaps (rendezvous hashing: stable as members come and go)."""
        def weight(member: str) -> bytes:
            return hashlib.blake2b(f"{member}\0{device_id}".encode(), digest_size=8).digest()

        return max(self.members(), key=weight)

    def owns(self, device_id: str) -> bool:
        return self.owner(device_id) == self.instance_id


class Digest:
    """The numbers one consumer saw since its last digest, as a JSON message for its peers (orjson both
    ways: at 20k messages/s a digest carries 20k numbers a second)."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._seen: dict[str, dict[str, list[int]]] = {}

    def add(self, device_id: str, suffix: str, seq: int) -> None:
        self._seen.setdefault(device_id, {}).setdefault(suffix, []).append(seq)

    def flush(self) -> bytes:
        payload = orjson.dumps({"instance": self.instance_id, "seen": self._seen})
        self._seen = {}
        return payload

    @staticmethod
    def parse(data: bytes) -> tuple[str, Iterable[tuple[str, str, int]]]:
        """``(instance id, [(device, suffix, seq), ...])``; ValueError when it is not a digest."""
        document = orjson.loads(data)
        if not isinstance(document, dict) or not isinstance(document.get("instance"), str):
            raise ValueError("a digest is an object with an 'instance' string")
        seen = document.get("seen")
        if not isinstance(seen, dict):
            raise ValueError("a digest's 'seen' must be an object")
        items = [(device, suffix, seq) for device, topics in seen.items() if isinstance(topics, dict)
                 for suffix, seqs in topics.items() if isinstance(seqs, list)
                 for seq in seqs if isinstance(seq, int) and not isinstance(seq, bool)]
        return document["instance"], items
