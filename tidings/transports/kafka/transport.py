"""``kafka://host:port[,host:port][?options]``: Apache Kafka (or a compatible broker)
through confluent-kafka (librdkafka), driven by our own threads (decision 0005).

- appends: one idempotent producer; its delivery reports, handled by a poll thread,
  resolve asyncio futures with ``call_soon_threadsafe``; the partition is chosen by
  ``tidings.partitioning`` (Kafka's murmur2), so a key lands where it would on the other
  transports and with Kafka's Java producer;
- groups: :class:`~tidings.transports._kafka_consumer.KafkaConsumer`, cooperative-sticky;
- admin (topics, offsets, groups): ``AdminClient`` calls waited for in threads;
- records on the wire follow the CloudEvents Kafka binding (``tidings.codec.binary``).

URL options: see :mod:`tidings.transports.kafka_config`; differences of the test broker
(Tansu) from Apache Kafka: docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tidings.codec.binary import HeaderMap, Headers, event_to_kafka, to_kafka
from tidings.envelope import Event
from tidings.errors import (
    ConfigError,
    GroupBusy,
    RecordRejected,
    TopicNotFound,
    TransportError,
)
from tidings.partitioning import partition_for
from tidings.transport import (
    FOREVER,
    Capabilities,
    Consumer,
    GroupInfo,
    GroupPartition,
    MemberInfo,
    PartitionInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
    check_topic_name,
)
from tidings.transports.kafka.config import parse_kafka_url
from tidings.transports.kafka.consumer import KafkaConsumer, to_record

__all__ = ["KafkaTransport"]

T = TypeVar("T")
log = logging.getLogger("tidings.kafka")
TIMEOUT = 30.0  # seconds for one admin request
READ_TIMEOUT = 10.0  # seconds one read may take to reach its limit or the partition's end
SETTLE_POLL = 0.05  # seconds between two looks at a group's state while waiting for Stable
SETTLE_QUIET = 0.25  # seconds a group must stay Stable before a member leaves it
MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes


def _require_client() -> None:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the kafka:// transport needs confluent-kafka: install `tidings[kafka]`"
        ) from None


class KafkaTransport(Transport):
    # seek_by_time: ListOffsets by timestamp; multi_process: groups span processes.
    # librdkafka's message.max.bytes default
    capabilities = Capabilities(persistent=True, multi_process=True, max_record_bytes=1_000_000)

    def __init__(self, url: str) -> None:
        self.config = parse_kafka_url(url)
        self.url = self.config.redacted_url()
        self._producer: Any = None
        self._admin: Any = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._counts: dict[str, int] = {}  # partition counts never shrink: safe to cache
        self._live: weakref.WeakSet[KafkaConsumer] = weakref.WeakSet()
        self._shared: dict[Any, Record] = {}  # records converted for one group, for the others
        # read() outside any group: one assign-only consumer, kept (creating one per read
        # cost ~0.1 s), used by one thread at a time.
        self._reader: Any = None
        self._reading = threading.Lock()
        # A record larger than this is refused by librdkafka at produce (RecordRejected).
        self._max_record = MESSAGE_MAX_BYTES

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        _require_client()
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient

        try:
            self._admin = AdminClient(self.config.admin())
            self._producer = Producer(self.config.producer())
        except Exception as exc:
            raise refused_settings(exc, "producer") from None
        with contextlib.suppress(ValueError):  # librdkafka took it: an integer
            self._max_record = int(
                self.config.producer().get("message.max.bytes", MESSAGE_MAX_BYTES)
            )
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        # Delivery reports are served here; each resolves its future on the loop.
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def close(self) -> None:
        if self._producer is None:
            return
        for consumer in list(self._live):
            await consumer.close()
        await asyncio.to_thread(self._producer.flush, TIMEOUT)
        await asyncio.to_thread(self._close_reader)
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)
        self._producer = self._admin = self._poller = None

    def _close_reader(self) -> None:
        with self._reading:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await asyncio.to_thread(fn)
        except (TransportError, ConfigError):
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    def _started(self) -> Any:
        if self._admin is None:
            raise TransportError(f"{self.url}: the transport is not started (await start())")
        return self._admin

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
            raise ConfigError(
                f"topic {topic!r}: keep_unread needs a log that deletes records itself "
                f"(SQLite); {self.url.split(':', 1)[0]}'s broker applies its own retention, "
                "so set a retention long enough for your slowest group instead"
            )
        for name, value in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
            if value is not None and value < 0 and value != FOREVER:
                raise ConfigError(
                    f"topic {topic!r}: {name} must be >= 0, or FOREVER (-1) to keep every "
                    f"record; got {value}"
                )
        admin = self._started()
        count = self.config.partitions if partitions is None else partitions
        if count < 1:
            raise ConfigError(f"topic {topic!r}: partitions must be >= 1, got {count}")
        if topic not in self._counts:
            from confluent_kafka import KafkaError

            config = {}
            if retention_ms is not None:
                config["retention.ms"] = str(retention_ms)
            if retention_bytes is not None:
                config["retention.bytes"] = str(retention_bytes)
            new = _rd_admin().NewTopic(topic, count, self.config.replication_factor, config=config)

            def create() -> None:
                try:
                    admin.create_topics([new], operation_timeout=TIMEOUT)[topic].result(TIMEOUT)
                except Exception as exc:
                    err = exc.args[0] if exc.args else None
                    if not (
                        isinstance(err, KafkaError)
                        and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                    ):
                        raise

            await self._call(create, f"create topic {topic!r}")
        [info] = await self._infos([topic])
        return info

    async def _partition_count(self, topic: str) -> int:
        count = self._counts.get(topic)
        if count is None:
            meta = await self._call(
                lambda: self._started().list_topics(timeout=TIMEOUT), "list topics"
            )
            found = meta.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise TopicNotFound(f"topic {topic!r} does not exist on {self.url}")
            count = self._counts[topic] = len(found.partitions)
        return count

    async def _offsets(self, topic: str, count: int, spec: Any) -> dict[int, int]:
        from confluent_kafka import TopicPartition as RdTopicPartition

        admin = self._started()
        request = {RdTopicPartition(topic, p): spec for p in range(count)}

        def run() -> dict[int, int]:
            futures = admin.list_offsets(request, request_timeout=TIMEOUT)
            return {tp.partition: f.result(TIMEOUT).offset for tp, f in futures.items()}

        return await self._call(run, f"list offsets of {topic!r}")

    async def _ends(self, topic: str, count: int) -> dict[int, int]:
        return await self._offsets(topic, count, _rd_admin().OffsetSpec.latest())

    async def _starts(self, topic: str, count: int) -> dict[int, int]:
        """The first offset each partition still holds (retention moves it)."""
        return await self._offsets(topic, count, _rd_admin().OffsetSpec.earliest())

    async def _infos(self, names: Sequence[str]) -> list[TopicInfo]:
        out = []
        for name in names:
            count = await self._partition_count(name)
            starts = await self._starts(name, count)
            ends = await self._ends(name, count)
            # bytes: Kafka's admin API has no per-partition size in confluent-kafka
            # (DescribeLogDirs is missing there): reported as 0, see docs/kafka.md.
            parts = tuple(PartitionInfo(p, starts[p], ends[p], 0) for p in range(count))
            out.append(TopicInfo(name, parts))
        return out

    async def topics(self) -> list[TopicInfo]:
        meta = await self._call(lambda: self._started().list_topics(timeout=TIMEOUT), "list topics")
        names = sorted(t for t in meta.topics if not t.startswith("__"))
        return await self._infos(names)

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

    async def _send(
        self,
        topic: str,
        records: Sequence[tuple[str | None, tuple[bytes | None, Headers | HeaderMap]]],
    ) -> list[tuple[int, int]]:
        if self._producer is None:
            self._started()
        try:
            count = await self._partition_count(topic)
        except TopicNotFound:
            count = len((await self.create_topic(topic)).partitions)
        if not records:
            return []
        limit = self._max_record
        for i, (key, (value, _)) in enumerate(records):
            # What librdkafka would refuse at produce, refused before anything of this
            # append is queued (a lower bound of its size: headers are left out).
            size = (len(value) if value else 0) + (len(key.encode()) if key else 0)
            if size > limit:
                raise RecordRejected(
                    f"append to {topic!r}: record {i + 1} of {len(records)} is too large: "
                    f"{size} bytes, over the producer's message.max.bytes ({limit}); "
                    "sending it again fails alike"
                )
        acks = _Acks(asyncio.get_running_loop(), topic, len(records))
        produce, report = self._producer.produce, acks.report
        for i, (key, (value, headers)) in enumerate(records):
            raw_key = None if key is None else key.encode()
            partition = partition_for(key, count)
            done = functools.partial(report, i)
            try:  # produce only queues; a full queue is the rare case
                produce(
                    topic, value, raw_key, partition=partition, headers=headers, on_delivery=done
                )
            except BufferError:
                self._produce_when_room(topic, value, raw_key, partition, headers, done)
            except Exception as exc:  # records before it may be appended all the same
                raise _translate(
                    exc, f"append to {topic!r}: record {i + 1} of {len(records)}"
                ) from exc
        return await acks.future

    def _produce_when_room(
        self, topic: str, value: Any, key: Any, partition: int, headers: Any, cb: Any
    ) -> None:
        for _ in range(1000):  # a full local queue drains as the poll thread delivers
            self._producer.poll(0.01)
            try:
                self._producer.produce(
                    topic, value, key, partition=partition, headers=headers, on_delivery=cb
                )
                return
            except BufferError:
                pass
        raise TransportError(f"the Kafka producer's queue stayed full for topic {topic!r}")

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        count = await self._partition_count(topic)
        if not 0 <= partition < count:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {partition}")
        if limit <= 0:
            return []

        def run() -> list[Any]:
            from confluent_kafka import KafkaError
            from confluent_kafka import TopicPartition as RdTopicPartition

            with self._reading:  # one read at a time on the one reader
                if self._reader is None:
                    from confluent_kafka import Consumer as RdConsumer

                    self._reader = RdConsumer(self.config.reader())
                reader = self._reader
                reader.assign([RdTopicPartition(topic, partition, offset)])
                out: list[Any] = []
                deadline = time.monotonic() + READ_TIMEOUT
                while len(out) < limit and time.monotonic() < deadline:
                    for m in reader.consume(limit - len(out), 0.05):
                        if m.topic() != topic or m.partition() != partition:
                            continue  # left over from an earlier read
                        err = m.error()
                        if err is None:
                            # after the last one taken (compacted or expired offsets
                            # leave gaps; stale messages of an earlier read come before)
                            if m.offset() >= (out[-1].offset() + 1 if out else offset):
                                out.append(m)
                        elif err.code() == KafkaError._PARTITION_EOF:
                            return out
                        else:
                            raise TransportError(f"read {topic}[{partition}]: {err.str()}")
                return out

        return [to_record(m) for m in await self._call(run, f"read {topic}[{partition}]")]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        count = await self._partition_count(topic)
        found = await self._offsets(
            topic, count, _rd_admin().OffsetSpec.for_timestamp(timestamp_ms)
        )
        if all(o >= 0 for o in found.values()):
            return found
        ends = await self._ends(topic, count)  # -1: nothing that late, so the end
        return {p: o if o >= 0 else ends[p] for p, o in found.items()}

    # -- groups -------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        return KafkaConsumer(self, group, topics, start_from, on_revoke)

    async def groups(self) -> list[GroupInfo]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        admin = self._started()
        listing = await self._call(
            lambda: admin.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT),
            "list groups",
        )
        out = []
        for group in sorted(g.group_id for g in listing.valid):
            request = [ConsumerGroupTopicPartitions(group)]
            offsets: Any = await self._call(
                functools.partial(_result, admin.list_consumer_group_offsets(request), group),
                f"offsets of group {group!r}",
            )
            described = await self._describe(group)
            members, owner = self._members(described)
            committed = {(tp.topic, tp.partition): tp.offset for tp in offsets.topic_partitions}
            rows = []
            for topic in sorted({t for t, _ in committed} | {t for t, _ in owner}):
                try:
                    count = await self._partition_count(topic)
                except TopicNotFound:
                    continue
                starts = await self._starts(topic, count)
                ends = await self._ends(topic, count)
                for p in range(count):
                    c = committed.get((topic, p))
                    c = c if c is not None and c >= 0 else None
                    start = max(starts[p], 0)
                    rows.append(
                        GroupPartition(
                            group,
                            topic,
                            p,
                            c,
                            ends[p],
                            start=start,
                            member=owner.get((topic, p)),
                            # below the log's start now, never read by the group
                            lost=0 if c is None else max(0, start - c),
                        )
                    )
            out.append(GroupInfo(group, tuple(rows), members))
        return out

    def _members(self, described: Any) -> tuple[tuple[MemberInfo, ...], dict[tuple[str, int], str]]:
        prefix = self.config.client_id + "-"
        found: dict[str, tuple[str, list[tuple[str, int]]]] = {}
        owner = {}
        for m in described.members:
            # KafkaConsumer sets client.id to "<client_id>-<member>" so that it shows here;
            # its Kafka members (one per topic) are one tidings member.
            name = m.client_id[len(prefix) :] if m.client_id.startswith(prefix) else m.member_id
            tps = [
                (tp.topic, tp.partition)
                for tp in (m.assignment.topic_partitions if m.assignment else [])
            ]
            owner.update(dict.fromkeys(tps, name))
            found.setdefault(name, (m.host, []))[1].extend(tps)
        members = []
        for name, (host, tps) in found.items():
            pid = name.rsplit("-", 2)[-2] if name.count("-") >= 2 else "0"
            members.append(
                MemberInfo(name, host, int(pid) if pid.isdecimal() else 0, tuple(sorted(tps)))
            )
        return tuple(members), owner

    async def _check_no_other_members(self, group: str, local: int, force: bool) -> None:
        """GroupBusy if members in other processes hold ``group``: Apache Kafka refuses to
        move the offsets of a group with members, and only this process's can be moved
        by hand. The group's state is asked, not its member list, which Tansu leaves
        empty (docs/kafka.md)."""
        described = await self._describe(group)
        others = len(described.members) - local
        # Every state but Empty and Dead: during a rebalance Tansu's state reads UNKNOWN
        # to confluent-kafka, and a reset let through then moved nothing (the soak).
        busy = described.state not in _idle_states() and (others > 0 or local == 0)
        if busy:
            how = (
                "--force moves only members in this process: stop the others first"
                if force
                else "stop its workers first"
            )
            raise GroupBusy(
                f"group {group!r} has live members in other processes (Kafka group state "
                f"{described.state.name}); Kafka refuses to move the offsets of a group "
                f"with members: {how}"
            )

    async def _describe(self, group: str, timeout: float = TIMEOUT) -> Any:
        """The broker's description of ``group``: its state and members."""
        admin = self._started()
        return await self._call(
            lambda: admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(
                timeout
            ),
            f"describe group {group!r}",
        )

    async def settled(self, group: str, timeout: float) -> bool:
        """Wait until ``group`` has been Stable (or Empty) for ``SETTLE_QUIET`` seconds:
        no rebalance under way. False if it was not within ``timeout`` seconds, or its
        state could not be asked; never raises.

        A member about to leave waits for this (``KafkaConsumer.close``): Tansu 0.6.0
        keeps a group's leader when that member leaves in the middle of a rebalance, so
        the group waits for it forever and nobody is given its partitions (docs/kafka.md,
        difference 6). Apache Kafka elects another leader; there this costs at most the
        end of the rebalance under way. One look at Stable is not enough: between the
        two rounds of a cooperative rebalance the group is Stable for a moment, until
        the members that gave partitions up join again.
        """
        from confluent_kafka import ConsumerGroupState

        if self._admin is None:
            return False
        settled = (ConsumerGroupState.STABLE, ConsumerGroupState.EMPTY)
        deadline = time.monotonic() + timeout
        since: float | None = None  # when the run of Stable looks began
        while True:
            asked = time.monotonic()
            remaining = deadline - asked
            if remaining <= 0:
                return False
            try:
                described = await self._describe(group, remaining)
            except Exception as exc:  # shutting down: do not wait on a broker that is gone
                log.info("group %r: its state could not be asked (%s); leaving anyway", group, exc)
                return False
            if described.state not in settled:
                since = None
            elif since is None:
                since = asked
            elif asked - since >= SETTLE_QUIET:
                return True
            await asyncio.sleep(min(SETTLE_POLL, max(0.0, deadline - time.monotonic())))

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka import TopicPartition as RdTopicPartition

        admin = self._started()
        local = [c for c in self._live if c.group == group and not c.closed]
        if local and not force:
            raise GroupBusy(f"group {group!r} has live members; stop them or pass force")
        await self._check_no_other_members(group, sum(c.kafka_members for c in local), force)
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
        if not remaining:
            return
        request = [
            ConsumerGroupTopicPartitions(
                group, [RdTopicPartition(topic, p, o) for p, o in remaining.items()]
            )
        ]
        await self._call(
            lambda: admin.alter_consumer_group_offsets(request)[group].result(TIMEOUT),
            f"set offsets of group {group!r}",
        )


def _idle_states() -> frozenset[Any]:
    """Group states with no member: the only ones whose offsets may be moved."""
    from confluent_kafka import ConsumerGroupState

    return frozenset({ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD})


def refused_settings(exc: Exception, client: str) -> Exception:
    """librdkafka refusing a setting (``producer.x=...`` in the URL) as a ConfigError."""
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG:
        return ConfigError(
            f"librdkafka refused the {client} settings of the kafka:// URL: {err.str()}; "
            f"check the {client}.<property> options against librdkafka's CONFIGURATION.md"
        )
    return exc


def _rd_admin() -> Any:
    # confluent_kafka.admin's stubs do not export everything it has (NewTopic, OffsetSpec).
    return importlib.import_module("confluent_kafka.admin")


def _result(futures: Mapping[str, Any], key: str) -> Any:
    return futures[key].result(TIMEOUT)


class _Acks:
    """The delivery reports of one append, awaited as one future: settled on the loop
    once every record is acknowledged (with their (partition, offset) in the order
    given), or at the first failure. Reports arrive on whichever thread polls the
    producer; the loop is woken once per append, not once per record."""

    __slots__ = ("_count", "future", "loop", "placed", "topic", "total")

    def __init__(self, loop: asyncio.AbstractEventLoop, topic: str, total: int) -> None:
        self.loop = loop
        self.topic = topic
        self.total = total
        self.future: asyncio.Future[list[tuple[int, int]]] = loop.create_future()
        self.placed: list[tuple[int, int]] = [(-1, -1)] * total
        self._count = itertools.count(1)  # next() is atomic: reports may come from two threads

    def report(self, index: int, err: Any, msg: Any) -> None:  # on a polling thread
        if err is not None:
            exc: TransportError
            if err.code() in _too_large():
                exc = RecordRejected(
                    f"append to {self.topic!r}: a record was refused as too large "
                    f"({err.str()}); sending it again fails alike"
                )
            else:
                exc = TransportError(f"append to {self.topic!r} failed: {err.str()}")
            self.loop.call_soon_threadsafe(_settle, self.future, None, exc)
            return
        self.placed[index] = (msg.partition(), msg.offset())
        if next(self._count) == self.total:
            self.loop.call_soon_threadsafe(_settle, self.future, self.placed, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _too_large() -> frozenset[int]:
    """librdkafka's codes for a record (or batch) the producer or broker refuses for its
    size: sending it again fails alike. (librdkafka's own refusal at produce is
    MSG_SIZE_TOO_LARGE too; it has no local code for it.)"""
    from confluent_kafka import KafkaError

    return frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def _translate(exc: Exception, what: str) -> TransportError:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() in _too_large():
        return RecordRejected(
            f"{what}: refused as too large ({err.str()}); sending it again fails alike"
        )
    if isinstance(err, KafkaError) and err.code() in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    ):
        return TopicNotFound(f"{what}: {err.str()}")
    if isinstance(err, KafkaError):
        return TransportError(f"{what}: {err.str()}")
    return TransportError(f"{what}: {exc}")
