"""A member of a tidings group on Kafka: one librdkafka group member per topic
(:class:`~tidings.transports.kafka.member.Member`, each on its own polling thread),
fetched from and committed through as one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tidings.errors import TransportError
from tidings.transport import Consumer, Position, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.kafka.client import TransportClient
from tidings.transports.kafka.member import Member
from tidings.transports.kafka.records import to_records

__all__ = ["KafkaConsumer"]

SETTLE_TIMEOUT = 10.0  # how long a leaving member waits for its group to be Stable


class KafkaConsumer(Consumer):
    """A member of a tidings group on Kafka: one librdkafka group member per topic.

    librdkafka's cooperative-sticky assignor balances the *number* of partitions over
    all the topics a member subscribes to, not topic by topic: a worker joining a group
    that reads ``tasks`` and its retry topic was given the 8 idle retry partitions and
    none of ``tasks`` (tests/transports/test_broker_processes.py). With one member per
    topic, each topic is shared among exactly the members that read it, evenly.
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
        self._members = [Member(client, group, [t], start_from, on_revoke) for t in topics]
        self._arrived: asyncio.Event | None = None
        self._turn = 0  # which member's records a fetch takes first
        self.closed = False

    async def start(self) -> None:
        """Join the group (every member); return once each assignment is known."""
        self._arrived = asyncio.Event()
        for m in self._members:
            m.member, m.arrived = self.member, self._arrived
        self._client.live.add(self)
        try:
            for m in self._members:  # one at a time: each join is one rebalance
                await m.start()
        except BaseException:
            await self.close()
            raise

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        if self._arrived is None or self.closed:
            raise TransportError(f"consumer of group {self.group!r} is not started or closed")
        deadline = time.monotonic() + timeout
        while True:
            self._arrived.clear()
            out: list[Any] = []
            leases: dict[TopicPartition, int] = {}
            count = len(self._members)
            self._turn = (self._turn + 1) % count
            for i in range(count):
                member = self._members[(self._turn + i) % count]
                if member.error is not None:
                    raise member.dead()
                taken, owned = member.take(max_records - len(out))
                if taken:
                    out += taken
                    leases.update(owned)
                if len(out) >= max_records:
                    break
            if out:
                client = self._client
                shared = client.shared if len(client.live) > 1 else None
                return to_records(out, leases, shared)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:  # asyncio.timeout: wait_for would wrap the wait in a task (3.11)
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return []

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        """Commit synchronously; offsets of partitions not owned now are dropped (fenced)."""
        await asyncio.gather(
            *(
                m.commit({tp: o for tp, o in offsets.items() if tp[0] == m.topics[0]})
                for m in self._members
                if any(tp[0] == m.topics[0] for tp in offsets)
            )
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset().union(*(m.assignment() for m in self._members))

    def generation(self, tp: TopicPartition) -> int | None:
        for m in self._members:
            if tp[0] == m.topics[0]:
                return m.generation(tp)
        return None

    @property
    def kafka_members(self) -> int:
        """How many librdkafka group members this is (one per topic)."""
        return len(self._members)

    async def reset(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Move owned partitions of ``topic`` to ``offsets`` and commit them there (a
        forced reset): ``on_revoke`` runs for them first, then they are owned under a new
        generation, so nothing fetched before the reset can be committed after it."""
        for m in self._members:
            if m.topics[0] == topic:
                await m.reset({(topic, p): o for p, o in offsets.items()})

    async def close(self) -> None:
        """Leave the group (on_revoke runs for what is owned); commit nothing.

        The members leave one at a time, each once the group is Stable (at most
        ``SETTLE_TIMEOUT`` each): on Tansu, a member that leaves while it leads a
        rebalance under way (one that another member's join or leave began, or the
        second round of a cooperative one) leaves the group waiting for it forever, and
        the members left are never given its partitions (docs/kafka.md, difference 6).
        Each leave begins a rebalance of its own, so the next member waits for it too.
        """
        if self.closed:
            return
        self.closed = True
        self._client.live.discard(self)
        for m in self._members:
            if m.joined:
                await self._client.settled(self.group, SETTLE_TIMEOUT)
            await m.close()
