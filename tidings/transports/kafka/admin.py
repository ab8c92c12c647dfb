"""Topics, offsets and groups: librdkafka's ``AdminClient``, each request waited for in a
thread, its errors translated (:func:`~tidings.transports.kafka.errors.translate`), the
client's librdkafka log handed over after it (:mod:`~tidings.transports.kafka.logs`); and
the first contact of a start, bounded (:meth:`Admin.reach`)."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tidings.errors import ConfigError, GroupBusy, TopicNotFound, TransportError
from tidings.transport import (
    FOREVER,
    GroupInfo,
    GroupPartition,
    MemberInfo,
    PartitionInfo,
    TopicInfo,
    check_topic_name,
    keep_unread_refused,
)
from tidings.transports.kafka.config import KafkaConfig
from tidings.transports.kafka.errors import already_exists, in_thread, not_started, unreachable
from tidings.transports.kafka.logs import ClientLog

__all__ = ["SETTLE_QUIET", "TIMEOUT", "Admin"]

log = logging.getLogger("tidings.kafka")
TIMEOUT = 30.0  # seconds for one admin request
SETTLE_POLL = 0.05  # seconds between two looks at a group's state while waiting for Stable
SETTLE_QUIET = 0.25  # seconds a group must stay Stable before a member leaves it

T = TypeVar("T")


class Admin:
    """The transport's ``AdminClient`` (``native``, set while started) and what it asks:
    topics (created, described, their offsets), groups (described, their offsets
    listed and moved). Partition counts are cached: they never shrink."""

    def __init__(self, config: KafkaConfig, url: str) -> None:
        self.config = config
        self.url = url
        self.native: Any = None
        self.counts: dict[str, int] = {}
        self.log: ClientLog | None = None  # the client's librdkafka log (kafka/logs.py)

    def open(self) -> None:
        from confluent_kafka.admin import AdminClient

        conf = self.config.admin()
        self.log = conf["logger"]
        self.native = AdminClient(conf)

    def close(self) -> None:
        if self.native is not None:
            self.native.poll(0)  # hand over what librdkafka logged since the last request
        self.native = None

    async def reach(self) -> None:
        """Return once a broker answered a metadata request; TransportError, saying what
        to check, if none did within the URL's ``connect_timeout_ms``. librdkafka would
        keep trying for ever (each admin request for ``TIMEOUT``), and say why only in
        its log."""
        admin = self.started()
        within = self.config.connect_timeout_ms / 1000
        try:
            await asyncio.to_thread(self._drained, lambda: admin.list_topics(timeout=within))
        except Exception as exc:
            seen = self.log.problem if self.log is not None else None
            raise unreachable(exc, self.url, within, seen) from exc

    def _drained(self, fn: Callable[[], T]) -> T:
        """``fn()``, then the client's log handed over: confluent-kafka does that only
        when the admin client is polled, and nothing else polls it."""
        native = self.native
        try:
            return fn()
        finally:
            if native is not None:
                native.poll(0)

    async def _run(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` (a blocking request) waited for in a thread, translated, then the
        client's log handed over."""
        return await in_thread(functools.partial(self._drained, fn), what)

    def started(self) -> Any:
        if self.native is None:
            raise not_started(self.url)
        return self.native

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
        for name, value in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
            if value is not None and value < 0 and value != FOREVER:
                raise ConfigError(
                    f"topic {topic!r}: {name} must be >= 0, or FOREVER (-1) to keep every "
                    f"record; got {value}"
                )
        admin = self.started()
        count = self.config.partitions if partitions is None else partitions
        if count < 1:
            raise ConfigError(f"topic {topic!r}: partitions must be >= 1, got {count}")
        if topic not in self.counts:
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
                    if not already_exists(exc):
                        raise

            await self._run(create, f"create topic {topic!r}")
        [info] = await self.infos([topic])
        return info

    async def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` (TopicNotFound if missing) and wait until the broker no
        longer lists it, so that an append right after creates it anew. Kafka drops the
        groups' committed offsets of a deleted topic itself."""
        check_topic_name(topic)
        admin = self.started()
        self.counts.pop(topic, None)
        await in_thread(
            lambda: admin.delete_topics([topic], operation_timeout=TIMEOUT)[topic].result(TIMEOUT),
            f"delete topic {topic!r}",
        )
        deadline = time.monotonic() + TIMEOUT
        while await self._listed(topic):
            if time.monotonic() > deadline:
                raise TransportError(
                    f"delete topic {topic!r}: {self.url} still lists it {TIMEOUT:g}s after "
                    "accepting its deletion"
                )
            await asyncio.sleep(SETTLE_POLL)
        self.counts.pop(topic, None)

    async def _listed(self, topic: str) -> bool:
        meta = await in_thread(lambda: self.started().list_topics(timeout=TIMEOUT), "list topics")
        found = meta.topics.get(topic)
        return found is not None and found.error is None

    async def partition_count(self, topic: str) -> int:
        count = self.counts.get(topic)
        if count is None:
            meta = await self._run(
                lambda: self.started().list_topics(timeout=TIMEOUT), "list topics"
            )
            found = meta.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise TopicNotFound(f"topic {topic!r} does not exist on {self.url}")
            count = self.counts[topic] = len(found.partitions)
        return count

    async def offsets(self, topic: str, count: int, spec: Any) -> dict[int, int]:
        from confluent_kafka import TopicPartition as RdTopicPartition

        admin = self.started()
        request = {RdTopicPartition(topic, p): spec for p in range(count)}

        def run() -> dict[int, int]:
            futures = admin.list_offsets(request, request_timeout=TIMEOUT)
            return {tp.partition: f.result(TIMEOUT).offset for tp, f in futures.items()}

        return await self._run(run, f"list offsets of {topic!r}")

    async def ends(self, topic: str, count: int) -> dict[int, int]:
        return await self.offsets(topic, count, _rd_admin().OffsetSpec.latest())

    async def starts(self, topic: str, count: int) -> dict[int, int]:
        """The first offset each partition still holds (retention moves it)."""
        return await self.offsets(topic, count, _rd_admin().OffsetSpec.earliest())

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        count = await self.partition_count(topic)
        found = await self.offsets(topic, count, _rd_admin().OffsetSpec.for_timestamp(timestamp_ms))
        if all(o >= 0 for o in found.values()):
            return found
        ends = await self.ends(topic, count)  # -1: nothing that late, so the end
        return {p: o if o >= 0 else ends[p] for p, o in found.items()}

    async def infos(self, names: Sequence[str]) -> list[TopicInfo]:
        out = []
        for name in names:
            count = await self.partition_count(name)
            starts = await self.starts(name, count)
            ends = await self.ends(name, count)
            # bytes: Kafka's admin API has no per-partition size in confluent-kafka
            # (DescribeLogDirs is missing there): reported as 0, see docs/kafka.md.
            parts = tuple(PartitionInfo(p, starts[p], ends[p], 0) for p in range(count))
            out.append(TopicInfo(name, parts))
        return out

    async def topics(self) -> list[TopicInfo]:
        meta = await self._run(lambda: self.started().list_topics(timeout=TIMEOUT), "list topics")
        names = sorted(t for t in meta.topics if not t.startswith("__"))
        return await self.infos(names)

    # -- groups -------------------------------------------------------------------------

    async def groups(self) -> list[GroupInfo]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        admin = self.started()
        listing = await self._run(
            lambda: admin.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT),
            "list groups",
        )
        out = []
        for group in sorted(g.group_id for g in listing.valid):
            request = [ConsumerGroupTopicPartitions(group)]
            offsets: Any = await self._run(
                functools.partial(_result, admin.list_consumer_group_offsets(request), group),
                f"offsets of group {group!r}",
            )
            members, owner = self._members(await self.describe(group))
            committed = {(tp.topic, tp.partition): tp.offset for tp in offsets.topic_partitions}
            rows = []
            for topic in sorted({t for t, _ in committed} | {t for t, _ in owner}):
                try:
                    count = await self.partition_count(topic)
                    rows += await self._rows(group, topic, count, committed, owner)
                except TopicNotFound:  # deleted (meanwhile, or by another process)
                    self.counts.pop(topic, None)
                    continue
            out.append(GroupInfo(group, tuple(rows), members))
        return out

    async def _rows(
        self,
        group: str,
        topic: str,
        count: int,
        committed: Mapping[tuple[str, int], int],
        owner: Mapping[tuple[str, int], str],
    ) -> list[GroupPartition]:
        """``group``'s rows of ``topic``, one per partition (``count`` of them)."""
        starts = await self.starts(topic, count)
        ends = await self.ends(topic, count)
        rows = []
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
        return rows

    def _members(self, described: Any) -> tuple[tuple[MemberInfo, ...], dict[tuple[str, int], str]]:
        prefix = self.config.client_id + "-"
        found: dict[str, tuple[str, list[tuple[str, int]]]] = {}
        owner = {}
        for m in described.members:
            # KafkaConsumer sets client.id to "<client_id>-<member>" so that it shows here
            # (one Kafka member per tidings member; members of older versions, one per
            # topic, are merged by that name).
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

    async def check_no_other_members(self, group: str, local: int, force: bool) -> None:
        """GroupBusy if members in other processes hold ``group``: Apache Kafka refuses to
        move the offsets of a group with members, and only this process's can be moved
        by hand. The group's state is asked, not its member list, which Tansu leaves
        empty (docs/kafka.md)."""
        described = await self.describe(group)
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

    async def describe(self, group: str, timeout: float = TIMEOUT) -> Any:
        """The broker's description of ``group``: its state and members."""
        admin = self.started()
        return await self._run(
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

        if self.native is None:
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
                described = await self.describe(group, remaining)
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

    async def alter_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Move the committed offsets of ``group`` (one without members) on ``topic``."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka import TopicPartition as RdTopicPartition

        admin = self.started()
        request = [
            ConsumerGroupTopicPartitions(
                group, [RdTopicPartition(topic, p, o) for p, o in offsets.items()]
            )
        ]
        await self._run(
            lambda: admin.alter_consumer_group_offsets(request)[group].result(TIMEOUT),
            f"set offsets of group {group!r}",
        )


def _idle_states() -> frozenset[Any]:
    """Group states with no member: the only ones whose offsets may be moved."""
    from confluent_kafka import ConsumerGroupState

    return frozenset({ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD})


def _rd_admin() -> Any:
    # confluent_kafka.admin's stubs do not export everything it has (NewTopic, OffsetSpec).
    return importlib.import_module("confluent_kafka.admin")


def _result(futures: Mapping[str, Any], key: str) -> Any:
    return futures[key].result(TIMEOUT)
