"""The transport protocol: the whole of what tidings asks of a log engine.

A transport stores opaque records (a partition key and the encoded event) in topics
of N partitions, and lets consumer groups read them. Everything else (codec,
handlers, retries, dead letters, inbox, tracing) lives above this module and works
the same on every transport. Implementations import this module, never the other way
round. ``tidings.testing`` holds the conformance suite that defines "implements".
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from tidings.codec import encode
from tidings.envelope import Event
from tidings.errors import ConfigError

__all__ = [
    "FENCE_AFTER",
    "FOREVER",
    "Capabilities",
    "Clock",
    "Consumer",
    "FaultHook",
    "GroupInfo",
    "GroupPartition",
    "LagSample",
    "MemberInfo",
    "PartitionInfo",
    "Position",
    "Record",
    "RevokeCallback",
    "StartFrom",
    "TopicInfo",
    "TopicPartition",
    "Transport",
    "check_group_name",
    "check_topic_name",
    "keep_unread_refused",
    "new_member_id",
    "positions",
]

StartFrom = Literal["earliest", "latest"]
"""Where a new group starts reading a partition (fixed at its first join)."""
TopicPartition = tuple[str, int]
"""A partition, named by its topic and its number."""
RevokeCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]
"""A consumer's ``on_revoke``: awaited with the partitions being taken away from it, so
that their in-flight records finish and commit first."""
FaultHook = Callable[[str], Awaitable[None]]
"""Called by a transport at its named fault points ("heartbeat", "lease", ...) when set:
tidings.testing's FaultyTransport raises or delays there."""

FOREVER = -1
"""``retention_ms`` / ``retention_bytes`` of ``create_topic``: never expire (dead
letters, replays)."""

FENCE_AFTER = 0.75
"""Where a transport judges leases itself (SQLite, NATS), a member stops acting on its
partitions once its renewals have failed for this share of a lease: another member
takes them only a whole lease after it last saw a renewal, which is later."""

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


def keep_unread_refused(url: str, topic: str) -> ConfigError:
    """The error of a broker that applies its own retention (Kafka, NATS) when asked to
    keep what a group has not read."""
    return ConfigError(
        f"topic {topic!r}: keep_unread needs a log that deletes records itself "
        f"(SQLite); {url.split(':', 1)[0]}'s broker applies its own retention, "
        "so set a retention long enough for your slowest group instead"
    )


def check_topic_name(topic: str) -> str:
    """Return ``topic`` if it is a valid name on every transport, else raise ConfigError."""
    if not isinstance(topic, str) or _TOPIC_RE.fullmatch(topic) is None:
        raise ConfigError(
            f"topic name {topic!r} is not valid: use 1 to 249 letters, digits, '.', '_' "
            "or '-', for example 'task-events'"
        )
    return topic


def check_group_name(group: str) -> str:
    """Return ``group`` if it is a valid group name, else raise ConfigError.

    A group owns the topics ``<group>.dlq`` (its dead letters) and ``<group>.retry``
    (replayed dead letters), so its name follows the topic rules, without dots.
    """
    if (
        not isinstance(group, str)
        or _TOPIC_RE.fullmatch(group) is None
        or "." in group
        or len(group) > 240
    ):
        raise ConfigError(
            f"group name {group!r} is not valid: use 1 to 240 letters, digits, '_' or '-' "
            "(no dots), for example 'email'"
        )
    return group


class Record(NamedTuple):
    """One stored record as read back. ``timestamp`` is the append time in ms.

    ``generation`` is the lease generation of the partition the record was fetched
    under (0 outside a group): a commit carries it, and the transport refuses a commit
    whose generation is no longer the partition's current one (fencing).

    A named tuple rather than a frozen dataclass: one is built per record per group
    fetched, and a tuple costs a seventh of the dataclass's ``__init__``.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: bytes
    generation: int = 0


class Position(NamedTuple):
    """What a commit records for one partition: the next offset to read, and the lease
    generation the records below it were fetched under."""

    offset: int
    generation: int


def positions(records: Sequence[Record]) -> dict[TopicPartition, Position]:
    """The positions to commit once ``records`` (in fetch order) are all handled."""
    out: dict[TopicPartition, Position] = {}
    for r in records:
        tp = (r.topic, r.partition)
        known = out.get(tp)
        if known is None or r.offset + 1 > known.offset:
            out[tp] = Position(r.offset + 1, r.generation)
    return out


class Clock:
    """Time as a transport judges it: wall time stamps records, monotonic time judges
    leases (a wall-clock step must never expire or prolong one). Tests replace it
    (``tidings.testing.SteppedClock``) to step either without waiting."""

    def time_ms(self) -> int:
        """Wall time in milliseconds since the epoch."""
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        """Monotonic seconds (only differences mean anything)."""
        return time.monotonic()


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of a topic: its offsets and size."""

    partition: int
    start: int  # first offset still stored (retention moves it)
    end: int  # no record of the partition has an offset at or past this one yet
    bytes: int
    # How many records the partition holds, where offsets are not dense (NATS: one
    # sequence per stream, shared by its partitions); None: ``end - start``.
    count: int | None = None

    @property
    def events(self) -> int:
        """How many events the partition holds."""
        return self.end - self.start if self.count is None else self.count


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """One topic, as ``tidings topics`` shows it: its partitions and retention."""

    name: str
    partitions: tuple[PartitionInfo, ...]
    retention_ms: int | None = None
    retention_bytes: int | None = None

    @property
    def events(self) -> int:
        """How many events the topic holds."""
        return sum(p.events for p in self.partitions)

    @property
    def size(self) -> int:
        """The topic's size in bytes."""
        return sum(p.bytes for p in self.partitions)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A live member of a group: which process it is and the partitions it holds."""

    member: str
    host: str
    pid: int
    partitions: tuple[TopicPartition, ...] = ()


class LagSample(NamedTuple):
    """Where a group stood in a partition at ``ts_ms`` (wall ms): lag health's input."""

    ts_ms: int
    committed: int
    lag: int


@dataclass(frozen=True, slots=True)
class GroupPartition:
    """One row of ``tidings groups``: where a group stands in one partition."""

    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has not started on this partition
    end: int
    start: int = 0
    member: str | None = None
    # Records still to handle, as the transport counts them where offsets are not dense
    # (NATS: the consumer's pending plus ack-pending); None: from the offsets.
    pending: int | None = None
    # Records retention removed before the group read them (counted where the
    # transport removes them itself; elsewhere, what lies below the log's start now).
    lost: int = 0
    # The last samples the log keeps of it, oldest first; None: the log keeps none.
    samples: tuple[LagSample, ...] | None = None

    @property
    def lag(self) -> int:
        """Events of the partition the group has still to handle."""
        if self.pending is not None:
            return self.pending
        base = self.start if self.committed is None else max(self.committed, self.start)
        return max(self.end - base, 0)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group: where it stands in each partition it reads, and its live members."""

    group: str
    partitions: tuple[GroupPartition, ...]
    members: tuple[MemberInfo, ...] = ()

    @property
    def lag(self) -> int:
        """Events the group has still to handle, over all its partitions."""
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport guarantees; the conformance suite reads it."""

    persistent: bool
    multi_process: bool  # several processes can share a group
    seek_by_time: bool = True  # offsets_for_time is supported
    ordered_per_key: bool = True  # one key's records are read back in append order
    # A partition's offsets are consecutive (0, 1, 2, ...). Where they are not (NATS
    # numbers a whole stream), they still grow in append order within a partition.
    dense_offsets: bool = True
    # append_at() holds records in the log until they are due (NATS message schedules);
    # elsewhere delayed events wait in a scheduler table (tidings.scheduler).
    scheduled_appends: bool = False
    # The largest record the log takes by default (Kafka's producer, NATS's payload
    # limit); None: no limit of its own. Dead letters keep what fits (tidings.dead_letters).
    max_record_bytes: int | None = None


def new_member_id() -> str:
    """A consumer-group member name that says where it runs: host, pid, random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Consumer(ABC):
    """One member of a consumer group, reading the partitions assigned to it.

    Partitions are shared among a group's members by the transport; when one is taken
    away, the ``on_revoke`` callback given at creation runs first, so that the owner can
    finish and commit in-flight records before another member starts on them.
    """

    def __init__(
        self,
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        if not group or not isinstance(group, str):
            raise ConfigError("a consumer group needs a non-empty name, e.g. 'email'")
        for topic in topics:
            check_topic_name(topic)
        self.group = group
        self.topics = list(topics)
        self.start_from = start_from
        self.on_revoke = on_revoke
        self.member = new_member_id()

    @abstractmethod
    async def start(self) -> None:
        """Join the group; return once the first assignment is known (maybe empty)."""

    @abstractmethod
    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        """Records from assigned partitions, in offset order per partition.

        Waits at most ``timeout`` seconds for the first record, returning promptly when
        one is appended. Never returns a record twice unless :meth:`seek` or a
        reassignment rewinds the position to before it. Only records of partitions
        still assigned when it returns, taken with no await after that check: the
        worker puts them in their lanes in that same step, so that a revocation never
        misses them (``_GroupRunner._fetch_into_lanes``).
        """

    @abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        """Record, durably, that the group has finished everything below each offset.

        The offset is the next one to read. A position whose generation is not the
        partition's current lease generation held by this member is ignored (fenced):
        a former owner, or this member after its lease was lost, expired, or reset by
        ``set_offsets(force=True)``, can never move the group's offset, backwards or
        forwards, behind the current owner's back, even if it holds the partition again.
        """

    @abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""

    @abstractmethod
    def generation(self, tp: TopicPartition) -> int | None:
        """The lease generation under which this member owns ``tp`` now (None: not
        owned). For positions set without reading (an offset reset by a live member);
        handled records carry their own, which is what a worker commits."""

    def at(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, Position]:
        """``offsets`` as positions under the generations held now (see :meth:`generation`);
        partitions not owned get generation -1, which every transport refuses."""
        out = {}
        for tp, offset in offsets.items():
            generation = self.generation(tp)
            out[tp] = Position(offset, -1 if generation is None else generation)
        return out

    @abstractmethod
    async def close(self) -> None:
        """Leave the group and hand the partitions back at once (no lease wait)."""


class Transport(ABC):
    """A log engine: topics of partitions, appends, consumer groups, offsets.

    Every method may be called concurrently from one event loop. Native errors are
    raised as :class:`tidings.errors.TransportError`.
    """

    url: str
    capabilities: Capabilities
    clock: Clock = SYSTEM_CLOCK
    fault_hook: FaultHook | None = None

    @abstractmethod
    async def start(self) -> None:
        """Connect or open storage. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Flush acknowledged work and release resources. Idempotent."""

    @abstractmethod
    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> TopicInfo:
        """Create ``topic`` if missing (default partition count of the URL); return it.

        An existing topic is returned as it is; its partition count never changes here,
        since that would move keys to other partitions. Retention ``None`` is the
        transport's default; :data:`FOREVER` keeps every record (dead letters, replays).
        ``keep_unread``: retention never deletes what a live group has not committed
        (where the transport removes records itself; elsewhere a ConfigError).
        """

    @abstractmethod
    async def delete_topic(self, topic: str) -> None:
        """Delete ``topic``: every record of it, and every group's committed offsets
        (and partition leases) on it. TopicNotFound if it does not exist.

        When this returns, the topic is gone from :meth:`topics` and no group lists a
        partition of it; :meth:`read` and :meth:`offsets_for_time` raise TopicNotFound.
        An :meth:`append` afterwards creates it again, as it creates any missing topic:
        empty, with the URL's default partition count, and with no group offsets, so a
        group that reads it again starts where ``start_from`` says. The transport does
        not ask whether groups still read it (``tidings.admin.delete_topic`` does):
        their live members lose its partitions, and may create it again by reading it.
        """

    @abstractmethod
    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        """Append ``(key, value)`` records durably; return each one's (partition, offset).

        Records of one key go to one partition (``tidings.partitioning``), in the order
        given. When this returns, the records survive a crash of this process (and, on
        a transport configured for it, a power loss). The topic is created if missing.
        """

    async def append_events(
        self, topic: str, events: Sequence[Event], max_bytes: int
    ) -> list[tuple[int, int]]:
        """Append ``events`` as :meth:`append` appends ``(event.key, encode(event,
        max_bytes))`` for each: the same records read back, the same EventError (for any
        event) before anything is appended.

        The default does exactly that; a transport that writes events in a form of its
        own (Kafka's binary mode) overrides it to skip the structured JSON in between.
        """
        return await self.append(topic, [(e.key, encode(e, max_bytes)) for e in events])

    @abstractmethod
    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        """A new member of ``group`` for ``topics``. A group's start on a partition
        (``start_from``: its end or beginning then) is fixed, as its offset, when it is
        first given it; from then on it resumes from its offsets (decision 0053)."""

    @abstractmethod
    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of one partition from ``offset``, outside any group."""

    @abstractmethod
    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset appended at or after ``timestamp_ms``
        (the end offset when there is none)."""

    @abstractmethod
    async def topics(self) -> list[TopicInfo]:
        """Every topic with its partitions' start and end offsets and sizes."""

    @abstractmethod
    async def groups(self) -> list[GroupInfo]:
        """Every group with committed offsets, end offsets and live members."""

    @abstractmethod
    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        """Move ``group``'s committed offsets (a seek or reset).

        Refuses with GroupBusy while the group has live members, unless ``force``.
        """

    async def append_at(
        self, topic: str, records: Sequence[tuple[str | None, bytes]], due_ms: int
    ) -> None:
        """Store ``records`` durably now, to be appended to ``topic`` at ``due_ms`` (ms
        since the epoch), each as :meth:`append` would. Only where
        ``capabilities.scheduled_appends``."""
        raise ConfigError(f"{self.url}: this transport cannot hold records until they are due")

    async def wait_for_appends(self, timeout: float) -> None:
        """Return when something may have been appended, or after ``timeout``.

        Used by followers of a topic outside a group (``tail --follow``). The default
        sleeps; transports with a wake-up signal override it.
        """
        await asyncio.sleep(timeout)
