"""``kafka://host:port[,host:port][?options]``: Apache Kafka (or a compatible broker)
through confluent-kafka (librdkafka), driven by our own threads (decision 0005).

The transport puts together the parts of the package, one per concept:

- appends: :mod:`~tidings.transports.kafka.producer`, one idempotent producer whose
  delivery reports a poll thread serves;
- groups: :class:`~tidings.transports.kafka.consumer.KafkaConsumer`, one
  :class:`~tidings.transports.kafka.member.Member` (one group membership, ``range``
  assignment) for all of a group's topics, given a
  :class:`~tidings.transports.kafka.client.TransportClient` (not the transport);
- admin (topics, offsets, groups): :mod:`~tidings.transports.kafka.admin`,
  ``AdminClient`` calls waited for in threads;
- reads outside a group: :mod:`~tidings.transports.kafka.reader`;
- records on the wire follow the CloudEvents Kafka binding (``tidings.codec.binary``),
  read back by :mod:`~tidings.transports.kafka.records`;
- native errors become tidings' in :func:`~tidings.transports.kafka.errors.translate`.

URL options: see :mod:`tidings.transports.kafka.config`; differences of the test broker
(Tansu) from Apache Kafka: docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence

from tidings.codec.binary import event_to_kafka, to_kafka
from tidings.envelope import Event
from tidings.errors import ConfigError, GroupBusy, TopicNotFound
from tidings.transport import (
    Capabilities,
    Consumer,
    GroupInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
)
from tidings.transports.kafka.admin import Admin
from tidings.transports.kafka.client import TransportClient
from tidings.transports.kafka.config import parse_kafka_url
from tidings.transports.kafka.consumer import KafkaConsumer
from tidings.transports.kafka.errors import in_thread, not_started, require_client, translate
from tidings.transports.kafka.producer import Outgoing, Producer
from tidings.transports.kafka.reader import Reader
from tidings.transports.kafka.records import to_record

__all__ = ["KafkaTransport"]


class KafkaTransport(Transport):
    # seek_by_time: ListOffsets by timestamp; multi_process: groups span processes.
    # librdkafka's message.max.bytes default
    capabilities = Capabilities(persistent=True, multi_process=True, max_record_bytes=1_000_000)

    def __init__(self, url: str) -> None:
        self.config = parse_kafka_url(url)
        self.url = self.config.redacted_url()
        self._admin = Admin(self.config, self.url)
        self._producer = Producer(self.config)
        self._reader = Reader(self.config)
        # What the consumers use of this transport (the transport itself they never see).
        self._client: TransportClient[KafkaConsumer] = TransportClient(
            self.config, self.url, self._admin
        )

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer.native is not None:
            return
        require_client()
        try:
            self._admin.open()
            self._producer.open()
        except Exception as exc:
            raise translate(exc, f"start {self.url}", client="producer") from None
        try:
            # Fail fast, saying what to check, when no broker answers: an operating
            # command would otherwise wait out its first request (30 s). A broker that
            # goes away later is waited for, as before (workers keep trying).
            await self._admin.reach()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._producer.native is None:
            return
        for consumer in list(self._client.live):
            await consumer.close()
        await self._producer.close()
        await asyncio.to_thread(self._reader.close)
        self._admin.close()

    # -- topics -----------------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> TopicInfo:
        return await self._admin.create_topic(
            topic,
            partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            keep_unread=keep_unread,
        )

    async def delete_topic(self, topic: str) -> None:
        await self._admin.delete_topic(topic)

    async def topics(self) -> list[TopicInfo]:
        return await self._admin.topics()

    # -- appends and reads -----------------------------------------------------------

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        fmt = self.config.format
        return await self._send(topic, [(key, to_kafka(value, fmt)) for key, value in records])

    async def append_events(
        self, topic: str, events: Sequence[Event], max_bytes: int
    ) -> list[tuple[int, int]]:
        # Binary mode from the events themselves (tidings.codec.binary.event_to_kafka): the same
        # records append(encode(...)) writes, without the structured JSON in between.
        fmt = self.config.format
        return await self._send(topic, [(e.key, event_to_kafka(e, max_bytes, fmt)) for e in events])

    async def _send(self, topic: str, records: Sequence[Outgoing]) -> list[tuple[int, int]]:
        if self._producer.native is None:
            raise not_started(self.url)
        try:
            count = await self._admin.partition_count(topic)
        except TopicNotFound:
            count = len((await self.create_topic(topic)).partitions)
        if not records:
            return []
        return await self._producer.send(topic, count, records)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        count = await self._admin.partition_count(topic)
        if not 0 <= partition < count:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {partition}")
        if limit <= 0:
            return []
        run = functools.partial(self._reader.read, topic, partition, offset, limit)
        return [to_record(m) for m in await in_thread(run, f"read {topic}[{partition}]")]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        return await self._admin.offsets_for_time(topic, timestamp_ms)

    # -- groups -------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        return KafkaConsumer(self._client, group, topics, start_from, on_revoke)

    async def groups(self) -> list[GroupInfo]:
        return await self._admin.groups()

    async def settled(self, group: str, timeout: float) -> bool:
        """:meth:`Admin.settled <tidings.transports.kafka.admin.Admin.settled>`: whether
        ``group`` stayed Stable (no rebalance under way) within ``timeout``."""
        return await self._admin.settled(group, timeout)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        self._admin.started()
        local = [c for c in self._client.live if c.group == group and not c.closed]
        if local and not force:
            raise GroupBusy(f"group {group!r} has live members; stop them or pass force")
        await self._admin.check_no_other_members(group, len(local), force)
        # Apache Kafka refuses to alter the offsets of a group with members, so live
        # members of this process move their own partitions: on_revoke, a new lease
        # (commits of records fetched before are fenced), seek, commit.
        remaining = dict(offsets)
        for c in local:
            mine = {p: o for p, o in offsets.items() if (topic, p) in c.assignment()}
            if mine:
                await c.reset(topic, mine)
                for p in mine:
                    remaining.pop(p, None)
        if remaining:
            await self._admin.alter_offsets(group, topic, remaining)
