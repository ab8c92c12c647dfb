"""``NatsTransport``: the transport protocol (``tidings.transport``) on NATS JetStream.

It puts together the package's parts, one per concept: the connection and its
JetStream requests (``client``), topics as streams (``streams``), appends
(``publish``), group state on the server (``groups``), group members (``membership``
and ``consumer``), offset resets (``resets``); native failures become tidings errors
in ``errors``. The package's docstring tells how the protocol maps onto JetStream.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence

from tidings.codec import encode
from tidings.envelope import Event
from tidings.errors import ConfigError
from tidings.transport import (
    Capabilities,
    Clock,
    Consumer,
    FaultHook,
    GroupInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
    check_topic_name,
    keep_unread_refused,
)
from tidings.transports.nats.client import JetStreamClient
from tidings.transports.nats.config import NatsConfig, parse_nats_url
from tidings.transports.nats.consumer import NatsConsumer
from tidings.transports.nats.groups import GroupClient, list_groups
from tidings.transports.nats.publish import Publisher
from tidings.transports.nats.records import event_identity, rfc3339, stored_record
from tidings.transports.nats.resets import set_offsets
from tidings.transports.nats.streams import Streams, stream_name

__all__ = ["MAX_PAYLOAD", "NatsTransport"]

MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


class NatsTransport(Transport):
    """A ``nats://`` URL's transport. Its parts: ``client`` (the connection and the
    JetStream API), ``streams`` (topics), ``publisher`` (appends) and ``group_client``
    (group state, what the group members use)."""

    capabilities = Capabilities(
        persistent=True,
        multi_process=True,
        dense_offsets=False,
        scheduled_appends=True,
        max_record_bytes=MAX_PAYLOAD,
    )

    def __init__(self, url: str) -> None:
        self.config: NatsConfig = parse_nats_url(url)
        if self.config.streams.storage == "memory":
            self.capabilities = Capabilities(
                persistent=False,
                multi_process=True,
                dense_offsets=False,
                scheduled_appends=True,
                max_record_bytes=MAX_PAYLOAD,
            )
        self.client = JetStreamClient(self.config, self._reconnected)
        self.url = self.client.url
        self.streams = Streams(self.client)
        self.publisher = Publisher(self.client, self.streams)
        self.group_client = GroupClient(self.client, self.streams)
        self._live: weakref.WeakSet[NatsConsumer] = weakref.WeakSet()
        self._start_lock = asyncio.Lock()

    # The group members' clock and fault points are the group client's (tests and
    # tidings.testing.FaultyTransport set them here).

    @property
    def clock(self) -> Clock:
        return self.group_client.clock

    @clock.setter
    def clock(self, value: Clock) -> None:
        self.group_client.clock = value

    @property
    def fault_hook(self) -> FaultHook | None:
        return self.group_client.fault_hook

    @fault_hook.setter
    def fault_hook(self, value: FaultHook | None) -> None:
        self.group_client.fault_hook = value

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self.client.nc is not None:
                return
            await self.client.connect()
            await self.publisher.start()

    def _reconnected(self) -> None:
        for consumer in list(self._live):
            consumer.reconnected()

    async def close(self) -> None:
        if self.client.nc is None:
            return
        for consumer in list(self._live):
            await consumer.close()
        self.publisher.close()
        await self.client.close()

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
        check_topic_name(topic)
        if keep_unread:
            raise keep_unread_refused(self.url, topic)
        if partitions is not None and partitions < 1:
            raise ConfigError(f"topic {topic!r} needs at least 1 partition, got {partitions}")
        await self.streams.ensure(topic, partitions, retention_ms, retention_bytes)
        return await self.streams.info(topic)

    async def delete_topic(self, topic: str) -> None:
        """The topic's stream (its records and the groups' durable consumers, whose ack
        floors are the groups' offsets), then the groups' lease keys of it."""
        await self.streams.delete(topic)
        await self.group_client.forget_topic(topic)

    async def topics(self) -> list[TopicInfo]:
        return await self.streams.all()

    # -- appends and reads ------------------------------------------------------------

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        items = [(key, value, *event_identity(value)) for key, value in records]
        seqs = await self.publisher.publish(topic, items, None)
        return [(p, seq - 1) for p, seq in seqs]

    async def append_events(
        self, topic: str, events: Sequence[Event], max_bytes: int
    ) -> list[tuple[int, int]]:
        # The id and the type are at hand: no need to read them back from the JSON.
        items = [(e.key, encode(e, max_bytes), e.id, e.type) for e in events]
        seqs = await self.publisher.publish(topic, items, None)
        return [(p, seq - 1) for p, seq in seqs]

    async def append_at(
        self, topic: str, records: Sequence[tuple[str | None, bytes]], due_ms: int
    ) -> None:
        """Each record waits in the topic's stream as a message schedule (subject
        ``<stream>.sched.<id>``, outside every partition) that the server turns into the
        record at ``due_ms``, with the second's precision of ``@at``."""
        items = [(key, value, *event_identity(value)) for key, value in records]
        await self.publisher.publish(topic, items, due_ms)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        count = await self.streams.partitions_of(topic)
        if not 0 <= partition < count or limit <= 0:
            return []
        stream = stream_name(topic)
        msgs = await self.client.direct_get(
            stream,
            {
                "seq": max(offset, 0) + 1,
                "next_by_subj": f"{stream}.{partition}.>",
                "batch": min(limit, 1000),
            },
        )
        return [stored_record(topic, partition, m) for m in msgs]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        count = await self.streams.partitions_of(topic)
        stream = stream_name(topic)
        end = int((await self.client.stream_info(stream))["state"].get("last_seq", 0))
        out = {}
        for p in range(count):
            found = await self.client.direct_get(
                stream,
                {
                    "start_time": rfc3339(max(timestamp_ms, 0)),
                    "next_by_subj": f"{stream}.{p}.>",
                    "batch": 1,
                },
            )
            out[p] = int(found[0].headers["Nats-Sequence"]) - 1 if found else end
        return out

    async def wait_for_appends(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.25))

    # -- groups -----------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        consumer = NatsConsumer(self.group_client, group, list(topics), start_from, on_revoke)
        self._live.add(consumer)
        return consumer

    async def groups(self) -> list[GroupInfo]:
        return await list_groups(self.group_client)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        await set_offsets(self.group_client, group, topic, offsets, force=force)
