"""``memory://[name]``: the transport for unit tests of user code.

Same semantics as the durable transports (partitions, groups, committed offsets,
rebalancing among members) within one process, with no durability. ``memory://``
gives each transport a private log; ``memory://name`` shares one log among every
transport of this process opened with that name.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tidings.errors import ConfigError, GroupBusy, TopicNotFound
from tidings.partitioning import partition_for
from tidings.transport import (
    FOREVER,
    Capabilities,
    Consumer,
    GroupInfo,
    GroupPartition,
    MemberInfo,
    PartitionInfo,
    Position,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    TopicPartition,
    Transport,
    check_topic_name,
)

__all__ = ["MemoryTransport"]


def _ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Partition:
    records: list[Record] = field(default_factory=list)
    start: int = 0
    end: int = 0
    bytes: int = 0
    last_ts: int = 0


@dataclass
class _Topic:
    name: str
    partitions: list[_Partition]
    retention_ms: int | None = None
    retention_bytes: int | None = None
    keep_unread: bool = False


class _Store:
    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        # (group, topic, partition) -> lease generation: raised by every assignment and
        # forced reset, so a commit made under an older one is refused.
        self.generations: dict[tuple[str, str, int], int] = {}
        self.members: dict[str, dict[str, MemoryConsumer]] = {}
        self.rebalance_locks: dict[str, asyncio.Lock] = {}
        self.wake = asyncio.Event()

    def notify(self) -> None:
        old, self.wake = self.wake, asyncio.Event()
        old.set()


_shared: dict[str, _Store] = {}


class MemoryTransport(Transport):
    capabilities = Capabilities(persistent=False, multi_process=False)

    def __init__(self, url: str = "memory://") -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigError(f"not a memory URL: {url!r} (expected memory:// or memory://name)")
        query = parse_qs(parts.query)
        self.url = url
        self.default_partitions = int(query.get("partitions", ["4"])[0])
        name = parts.netloc + parts.path
        self._store = _shared.setdefault(name, _Store()) if name else _Store()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _topic(self, topic: str) -> _Topic:
        try:
            return self._store.topics[topic]
        except KeyError:
            raise TopicNotFound(f"topic {topic!r} does not exist") from None

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> TopicInfo:
        if topic not in self._store.topics:
            check_topic_name(topic)
            count = partitions or self.default_partitions
            if count < 1:
                raise ConfigError(f"topic {topic!r}: partitions must be >= 1, got {count}")
            self._store.topics[topic] = _Topic(
                topic,
                [_Partition() for _ in range(count)],
                None if retention_ms == FOREVER else retention_ms,
                None if retention_bytes == FOREVER else retention_bytes,
                keep_unread,
            )
        return self._info(self._store.topics[topic])

    async def delete_topic(self, topic: str) -> None:
        self._topic(topic)
        store = self._store
        # Live members let go of its partitions first (as at a rebalance), then the
        # topic and every group's offsets and generations on it go.
        for group, members in list(store.members.items()):
            async with store.rebalance_locks.setdefault(group, asyncio.Lock()):
                for c in list(members.values()):
                    owned = frozenset(tp for tp in c.assignment() if tp[0] == topic)
                    if owned:
                        await c.revoke(owned)
        store.topics.pop(topic, None)
        # The generations stay: a commit of a record fetched before must not count on
        # the topic made again under the same name.
        for key in [k for k in store.offsets if k[1] == topic]:
            del store.offsets[key]
        store.notify()
        # Members still subscribed to it (a forced delete) read it again, new and empty.
        for group, members in list(store.members.items()):
            if any(topic in c.topics for c in members.values()):
                await self._rebalance(group)

    @staticmethod
    def _info(t: _Topic) -> TopicInfo:
        return TopicInfo(
            t.name,
            tuple(PartitionInfo(i, p.start, p.end, p.bytes) for i, p in enumerate(t.partitions)),
            t.retention_ms,
            t.retention_bytes,
        )

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        if topic not in self._store.topics:
            await self.create_topic(topic)
        t = self._store.topics[topic]
        now = _ms()
        out = []
        for key, value in records:
            n = partition_for(key, len(t.partitions))
            p = t.partitions[n]
            p.last_ts = max(p.last_ts, now)
            p.records.append(Record(topic, n, p.end, p.last_ts, key, bytes(value)))
            out.append((n, p.end))
            p.end += 1
            p.bytes += len(value)
        self._retain(t)
        self._store.notify()
        return out

    def _retain(self, t: _Topic) -> None:
        now = _ms()
        for n, p in enumerate(t.partitions):
            drop = 0
            if t.retention_ms is not None:
                while drop < len(p.records) and p.records[drop].timestamp < now - t.retention_ms:
                    drop += 1
            if t.retention_bytes is not None:
                size = p.bytes - sum(len(r.value) for r in p.records[:drop])
                while drop < len(p.records) and size > t.retention_bytes:
                    size -= len(p.records[drop].value)
                    drop += 1
            if t.keep_unread and drop:  # not past what a live group has not committed
                for group, members in self._store.members.items():
                    committed = self._store.offsets.get((group, t.name, n))
                    if members and committed is not None:
                        drop = max(0, min(drop, committed - p.start))
            if drop:
                p.bytes -= sum(len(r.value) for r in p.records[:drop])
                del p.records[:drop]
                p.start += drop

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        return MemoryConsumer(self, group, list(topics), start_from, on_revoke)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        p = self._topic(topic).partitions[partition]
        first = max(offset, p.start) - p.start
        return p.records[first : first + limit]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        out = {}
        for i, p in enumerate(self._topic(topic).partitions):
            pos = bisect.bisect_left([r.timestamp for r in p.records], timestamp_ms)
            out[i] = p.start + pos
        return out

    async def topics(self) -> list[TopicInfo]:
        return [self._info(t) for t in sorted(self._store.topics.values(), key=lambda t: t.name)]

    async def groups(self) -> list[GroupInfo]:
        names = {g for g, _, _ in self._store.offsets} | {
            g for g, m in self._store.members.items() if m
        }
        out = []
        for group in sorted(names):
            members = self._store.members.get(group, {})
            owner = {tp: m for m, c in members.items() for tp in c.assignment()}
            topics = {t for g, t, _ in self._store.offsets if g == group}
            topics |= {t for c in members.values() for t in c.topics}
            rows = []
            for topic in sorted(topics & self._store.topics.keys()):
                for i, p in enumerate(self._store.topics[topic].partitions):
                    committed = self._store.offsets.get((group, topic, i))
                    rows.append(
                        GroupPartition(
                            group,
                            topic,
                            i,
                            committed,
                            p.end,
                            p.start,
                            owner.get((topic, i)),
                            lost=max(0, p.start - committed) if committed is not None else 0,
                        )
                    )
            infos = tuple(
                MemberInfo(m, socket.gethostname(), os.getpid(), tuple(sorted(c.assignment())))
                for m, c in members.items()
            )
            out.append(GroupInfo(group, tuple(rows), infos))
        return out

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        if self._store.members.get(group) and not force:
            raise GroupBusy(
                f"group {group!r} has live members; stop its workers first or pass force"
            )
        t = self._topic(topic)
        moved = frozenset((topic, partition) for partition in offsets)
        # Live owners let go first (their lanes are dropped, their commits fenced by the
        # new generation), then take the partitions again from the new offsets; under
        # the group's lock, so that a member joining meanwhile does not interleave.
        async with self._store.rebalance_locks.setdefault(group, asyncio.Lock()):
            for c in list(self._store.members.get(group, {}).values()):
                owned = c.assignment() & moved
                if owned:
                    await c.revoke(owned)
            for partition, offset in offsets.items():
                p = t.partitions[partition]
                key = (group, topic, partition)
                self._store.offsets[key] = min(max(offset, p.start), p.end)
                self._store.generations[key] = self._store.generations.get(key, 0) + 1
        await self._rebalance(group)

    async def wait_for_appends(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._store.wake.wait(), timeout)

    # -- group membership -------------------------------------------------------

    async def _rebalance(self, group: str) -> None:
        store = self._store
        lock = store.rebalance_locks.setdefault(group, asyncio.Lock())
        async with lock:
            members = store.members.get(group, {})
            wanted: dict[str, set[TopicPartition]] = {m: set() for m in members}
            topics = sorted({t for c in members.values() for t in c.topics})
            ordered = list(members)
            for topic in topics:
                await self.create_topic(topic)
                subscribed = [m for m in ordered if topic in members[m].topics]
                for i in range(len(store.topics[topic].partitions)):
                    if subscribed:
                        wanted[subscribed[i % len(subscribed)]].add((topic, i))
            for m, c in members.items():
                lost = c.assignment() - wanted[m]
                if lost:
                    await c.revoke(frozenset(lost))
            for m, c in members.items():
                c.assign(frozenset(wanted[m]))


class MemoryConsumer(Consumer):
    def __init__(
        self,
        transport: MemoryTransport,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self.transport = transport
        self._owned: frozenset[TopicPartition] = frozenset()
        self._paused: frozenset[TopicPartition] = frozenset()
        self._position: dict[TopicPartition, int] = {}
        self._generation: dict[TopicPartition, int] = {}
        self._rr = 0

    async def start(self) -> None:
        self.transport._store.members.setdefault(self.group, {})[self.member] = self
        await self.transport._rebalance(self.group)

    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    def generation(self, tp: TopicPartition) -> int | None:
        return self._generation.get(tp) if tp in self._owned else None

    async def revoke(self, lost: frozenset[TopicPartition]) -> None:
        self._paused |= lost  # fetch stops here; commits still count until handed over
        try:
            if self.on_revoke is not None:
                await self.on_revoke(lost)
        finally:
            self._paused -= lost
        self._owned = self._owned - lost
        for tp in lost:
            self._position.pop(tp, None)

    def assign(self, owned: frozenset[TopicPartition]) -> None:
        store = self.transport._store
        for topic, partition in owned - self._owned:
            key = (self.group, topic, partition)
            if key not in store.offsets:
                p = store.topics[topic].partitions[partition]
                store.offsets[key] = p.start if self.start_from == "earliest" else p.end
            self._position[(topic, partition)] = store.offsets[key]
            store.generations[key] = generation = store.generations.get(key, 0) + 1
            self._generation[(topic, partition)] = generation
        self._owned = owned

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            wake = self.transport._store.wake
            out = self._take(max_records)
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except TimeoutError:
                return []

    def _take(self, max_records: int) -> list[Record]:
        owned = sorted(self._owned - self._paused)
        if not owned:
            return []
        self._rr = (self._rr + 1) % len(owned)
        out: list[Record] = []
        per = max(1, max_records // len(owned))
        for tp in owned[self._rr :] + owned[: self._rr]:
            t = self.transport._store.topics.get(tp[0])
            if t is None:  # deleted; this member loses it at once (delete_topic)
                continue
            p = t.partitions[tp[1]]
            pos = max(self._position[tp], p.start)
            first = pos - p.start
            batch = p.records[first : first + min(per, max_records - len(out))]
            if batch:
                generation = self._generation[tp]
                out.extend(r._replace(generation=generation) for r in batch)
                self._position[tp] = batch[-1].offset + 1
            if len(out) >= max_records:
                break
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        store = self.transport._store
        for (topic, partition), (offset, generation) in offsets.items():
            key = (self.group, topic, partition)
            if (topic, partition) in self._owned and store.generations.get(key) == generation:
                store.offsets[key] = offset

    async def close(self) -> None:
        members = self.transport._store.members.get(self.group, {})
        if members.pop(self.member, None) is not None:
            self._owned = frozenset()
            await self.transport._rebalance(self.group)
