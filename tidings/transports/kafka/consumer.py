"""A member of a tidings group on Kafka: one librdkafka group member
(:class:`~tidings.transports.kafka.member.Member`, on its own polling thread) that
subscribes to all of the group's topics (its own and ``<group>.retry``), so a worker
joins its group once (decision 0011)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from tidings.errors import TransportError
from tidings.transport import Consumer, Position, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.kafka.client import TransportClient
from tidings.transports.kafka.member import Member
from tidings.transports.kafka.records import to_records

__all__ = ["KafkaConsumer"]

SETTLE_TIMEOUT = 10.0  # how long a leaving member waits for its group to be Stable


class KafkaConsumer(Consumer):
    """A member of a tidings group on Kafka: one librdkafka group member for all of the
    group's topics, i.e. one group membership, one join, one leave.

    Partitions are given out by the ``range`` assignor, topic by topic: each topic is
    shared evenly among the members that read it. (librdkafka's cooperative-sticky
    assignor balances the *number* of partitions over all the topics a member reads: a
    worker joining a group that reads ``tasks`` and its retry topic was given the 8 idle
    retry partitions and none of ``tasks``, tests/transports/test_broker_processes.py.
    One member per topic avoided that, at the cost of one join per topic, one after the
    other: 51-53 s to the first event on Tansu's defaults, issue 17.)
    """

    def __init__(
        self,
        client: TransportClient[KafkaConsumer],
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._client = client
        self._member = Member(client, group, topics, start_from, on_revoke)
        self._arrived: asyncio.Event | None = None
        self.closed = False

    async def start(self) -> None:
        """Join the group; return once the first assignment is known (maybe empty)."""
        self._arrived = asyncio.Event()
        m = self._member
        m.member, m.arrived = self.member, self._arrived
        self._client.live.add(self)
        try:
            await m.start()
        except BaseException:
            await self.close()
            raise

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        arrived, member = self._arrived, self._member
        if arrived is None or self.closed:
            raise TransportError(f"consumer of group {self.group!r} is not started or closed")
        deadline = time.monotonic() + timeout
        while True:
            arrived.clear()
            if member.error is not None:
                raise member.dead()
            taken, leases = member.take(max_records)
            if taken:
                client = self._client
                shared = client.shared if len(client.live) > 1 else None
                return to_records(taken, leases, shared)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:  # asyncio.timeout: wait_for would wrap the wait in a task (3.11)
                async with asyncio.timeout(remaining):
                    await arrived.wait()
            except TimeoutError:
                return []

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        """Commit synchronously; offsets of partitions not owned now are dropped (fenced)."""
        if offsets:
            await self._member.commit(offsets)

    def assignment(self) -> frozenset[TopicPartition]:
        return self._member.assignment()

    def generation(self, tp: TopicPartition) -> int | None:
        return self._member.generation(tp)

    async def reset(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Move owned partitions of ``topic`` to ``offsets`` and commit them there (a
        forced reset): ``on_revoke`` runs for them first, then they are owned under a new
        generation, so nothing fetched before the reset can be committed after it."""
        await self._member.reset({(topic, p): o for p, o in offsets.items()})

    async def close(self) -> None:
        """Leave the group (on_revoke runs for what is owned; LeaveGroup); commit nothing.

        The member leaves once the group is Stable (at most ``SETTLE_TIMEOUT``): on
        Tansu, a member that leaves while it leads a rebalance under way (one that
        another member's join or leave began) leaves the group waiting for it forever,
        and the members left are never given its partitions (docs/kafka.md, difference
        6). On a Stable group that costs one look at its state.
        """
        if self.closed:
            return
        self.closed = True
        self._client.live.discard(self)
        if self._member.joined:
            await self._client.settled(self.group, SETTLE_TIMEOUT)
        await self._member.close()
