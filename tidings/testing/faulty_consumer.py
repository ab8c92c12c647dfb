"""A member of a group on a :class:`~tidings.testing.FaultyTransport`: fetches and
commits that fail and wait, partitions handed out again, and the kill."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence

from tidings.testing.fault_plan import InjectedFault, Killed
from tidings.testing.injector import FaultInjector
from tidings.transport import (
    Consumer,
    Position,
    Record,
    RevokeCallback,
    StartFrom,
    TopicPartition,
)

__all__ = ["FaultyConsumer"]


class FaultyConsumer(Consumer):
    """A member of a group on a :class:`~tidings.testing.FaultyTransport` (made by its
    :meth:`consumer`, drawing from its ``injector``): the inner transport's member, with
    delayed and failing fetches and commits, redeliveries and the kill.

    Its decisions come from streams of its own (by group and the order in which the
    transport made the group's members), so one member's schedule does not depend on
    how its calls interleave with another's.
    """

    def __init__(
        self,
        injector: FaultInjector,
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
        *,
        number: int,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._injector = injector
        self.name = f"{group}#{number}"
        self.inner = injector.inner.consumer(
            group, topics, start_from=start_from, on_revoke=self._revoked
        )
        injector.members.append(self.inner)
        self.member = self.inner.member
        # Per partition, under the generation of the records handed out: the offset a
        # redelivery starts at (the first handed out, then each commit seen to pass),
        # the offset after the last record handed out, and that generation.
        self._floor: dict[TopicPartition, int] = {}
        self._handed: dict[TopicPartition, int] = {}
        self._generation: dict[TopicPartition, int] = {}
        self._again: deque[Record] = deque()  # records to hand out again, in order

    def _op(self, op: str) -> str:
        return f"{self.name}:{op}"

    async def _revoked(self, tps: frozenset[TopicPartition]) -> None:
        """The inner member's revocation: forget what was handed out, then let the
        worker finish (unless this process is dead: it runs nothing any more)."""
        self._forget(tps)
        if self._injector.killed.is_set() or self.on_revoke is None:
            return
        try:
            await self.on_revoke(tps)
        except Killed:  # killed while finishing: the transport's rebalance goes on
            return

    def _forget(self, tps: frozenset[TopicPartition]) -> None:
        for tp in tps:
            self._floor.pop(tp, None)
            self._handed.pop(tp, None)
            self._generation.pop(tp, None)
        if self._again:
            self._again = deque(r for r in self._again if (r.topic, r.partition) not in tps)

    async def start(self) -> None:
        self._injector.check_alive()
        await self.inner.start()

    def assignment(self) -> frozenset[TopicPartition]:
        self._injector.check_alive()
        return self.inner.assignment()

    def generation(self, tp: TopicPartition) -> int | None:
        self._injector.check_alive()
        return self.inner.generation(tp)

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        f = self._injector
        kill = f.count_consumer_call()
        if kill is False:
            f.kill()
            f.check_alive()
        loop = asyncio.get_running_loop()
        started = loop.time()
        duplicate, choice = f.stream(self._op("duplicate")).draw(2)
        await f.draw("fetch", f.plan.fetch_error, stream=self._op("fetch"), limit=timeout)
        if duplicate < f.plan.duplicate:
            await self._hand_out_again(choice)
        if self._again:
            records = self._take_again(max_records)
        else:
            remaining = max(timeout - (loop.time() - started), 0.0)
            records = await self.inner.fetch(max_records, remaining)
        # No await from here on: the records are of partitions assigned now.
        if kill is True:
            f.kill()
        f.check_alive()
        for r in records:
            tp = (r.topic, r.partition)
            if self._generation.get(tp) != r.generation:
                self._generation[tp] = r.generation
                self._floor[tp] = r.offset
            self._handed[tp] = max(self._handed.get(tp, 0), r.offset + 1)
        return records

    async def _hand_out_again(self, choice: float) -> None:
        """Simulate a reassignment of one partition to this same member: the worker
        gives it up (finishes, commits), then its records come again from the last
        offset committed here."""
        f = self._injector
        candidates = sorted(
            tp
            for tp in self.inner.assignment()
            if self._handed.get(tp, 0) > self._floor.get(tp, self._handed.get(tp, 0))
        )
        if not candidates:
            return
        tp = candidates[int(choice * len(candidates))]
        generation = self._generation[tp]
        if self.on_revoke is not None:
            await self.on_revoke(frozenset([tp]))  # Killed goes on: this member is dead
        if tp not in self.inner.assignment() or self.inner.generation(tp) != generation:
            return  # really taken away meanwhile: its next owner starts from the commit
        start, end = self._floor[tp], self._handed[tp]
        again: list[Record] = []
        offset = start
        while offset < end:
            batch = await f.inner.read(tp[0], tp[1], offset, min(1000, end - offset))
            batch = [r for r in batch if r.offset < end]
            if not batch:
                break
            again += [r._replace(generation=generation) for r in batch]
            offset = batch[-1].offset + 1
        if tp not in self.inner.assignment() or self.inner.generation(tp) != generation:
            return
        self._again.extend(again)
        name = self._op("duplicate")
        f.record(name, f.stream(name).calls, "duplicate")
        if again:
            f.injected["duplicated_records"] += len(again)

    def _take_again(self, max_records: int) -> list[Record]:
        owned = self.inner.assignment()
        out: list[Record] = []
        while self._again and len(out) < max_records:
            r = self._again.popleft()
            tp = (r.topic, r.partition)
            if tp in owned and self.inner.generation(tp) == r.generation:
                out.append(r)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        f = self._injector
        kill = f.count_consumer_call()
        if kill is False:
            f.kill()
            f.check_alive()
        after = await f.draw("commit", f.plan.commit_error, stream=self._op("commit"))
        await self.inner.commit(offsets)
        for tp, position in offsets.items():
            if self._generation.get(tp) == position.generation:
                self._floor[tp] = position.offset
        if kill is True:
            f.kill()
        f.check_alive()
        if after:
            raise InjectedFault(f"injected commit error after the commit (seed={f.seed})")

    async def close(self) -> None:
        """Leave the group, unless this process was killed: then the leases stay until
        they expire (on a transport without leases the kill already left)."""
        if self._injector.killed.is_set():
            return
        if self.inner in self._injector.members:
            self._injector.members.remove(self.inner)
        await self.inner.close()
