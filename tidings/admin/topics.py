"""Topics and groups: listing, describing, lag by group and topic, deleting a topic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tidings.admin.health import health_json
from tidings.admin.positions import topic_info
from tidings.dead_letters import DeadLetterLog, dlq_topic, retry_topic, waiting
from tidings.errors import (
    GroupBusy,
    GroupNotFound,
)
from tidings.transport import (
    GroupInfo,
    GroupPartition,
    TopicInfo,
    Transport,
    check_topic_name,
)

if TYPE_CHECKING:
    from tidings.lag_health import GroupHealth, Health


_HEALTH_KEYS = ("health", "health_reason", "health_complete")
GROUP_JSON_KEYS = (
    "group", "topic", "partition", "committed", "end", "lag", "lost", "dlq", *_HEALTH_KEYS
)  # fmt: skip
"""The keys of each object of ``tidings groups --partitions --json`` (one per partition)."""
GROUP_TOPIC_JSON_KEYS = (
    "group", "topic", "partitions", "lag", "lost", "dlq", "members", "status", *_HEALTH_KEYS
)  # fmt: skip
"""The keys of each object of ``tidings groups --json`` (one per group and topic)."""

# -- topics and groups ------------------------------------------------------------


async def topic_rows(transport: Transport) -> list[TopicInfo]:
    """Every topic with its partitions' start and end offsets and sizes, by name."""
    return sorted(await transport.topics(), key=lambda t: t.name)


def topic_json(info: TopicInfo) -> dict[str, Any]:
    """One topic as ``tidings topics --json`` prints it."""
    return {
        "topic": info.name,
        "events": info.events,
        "bytes": info.size,
        "retention_ms": info.retention_ms,
        "retention_bytes": info.retention_bytes,
        "partitions": [
            {"partition": p.partition, "start": p.start, "end": p.end, "bytes": p.bytes}
            for p in info.partitions
        ],
    }


def size_text(n: int) -> str:
    """Bytes as ``tidings topics`` shows them: ``512 B``, ``1.5 KiB``, ``3.2 MiB``."""
    if n < 1024:
        return f"{n} B"
    amount, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{amount:.1f} {unit}"


async def topic_rate(transport: Transport, info: TopicInfo, window_s: float = 60.0) -> float:
    """Events appended to ``info``'s topic per second over the last ``window_s``
    seconds (by append time; where offsets are not dense, an estimate)."""
    since = transport.clock.time_ms() - int(window_s * 1000)
    found = await transport.offsets_for_time(info.name, since)
    added = sum(
        max(p.end - max(found.get(p.partition, p.end), p.start), 0) for p in info.partitions
    )
    return added / window_s


async def live_readers(transport: Transport, topic: str) -> list[GroupInfo]:
    """The groups with live members that read ``topic``: a member holds one of its
    partitions, or the group has offsets on it; ``<group>.dlq`` and ``<group>.retry``
    are read by ``<group>`` (its worker reads its dead letters outside the group)."""
    owner, dot, suffix = topic.rpartition(".")
    own = owner if dot and suffix in ("dlq", "retry") else None
    return [
        info
        for info in await transport.groups()
        if info.members
        and (
            info.group == own
            or any(row.topic == topic for row in info.partitions)
            or any(tp[0] == topic for m in info.members for tp in m.partitions)
        )
    ]


async def check_topic_deletable(
    transport: Transport, topic: str, *, force: bool = False
) -> tuple[TopicInfo, list[str]]:
    """What :func:`delete_topic` checks first, without deleting: the topic (TopicNotFound
    if missing, ConfigError for a name no topic can have) and the live groups that read
    it (see :func:`live_readers`); GroupBusy naming them, unless ``force``."""
    check_topic_name(topic)
    info = await topic_info(transport, topic)
    live = await live_readers(transport, topic)
    if live and not force:
        names = ", ".join(f"{g.group} ({len(g.members)} live member(s))" for g in live)
        raise GroupBusy(
            f"topic {topic!r} is read by group(s) with live members: {names}; stop their "
            "workers first, or pass --force (they lose its partitions, and a worker still "
            "reading it makes it again, empty)"
        )
    return info, [g.group for g in live]


async def delete_topic(transport: Transport, topic: str, *, force: bool = False) -> list[str]:
    """Delete ``topic``: its records and every group's offsets on it
    (``Transport.delete_topic``); return the live groups that read it, deleted under
    them only with ``force``.

    Refuses as :func:`check_topic_deletable` does: GroupBusy naming the live groups
    that read it, unless ``force`` (their workers lose its partitions, and one still
    reading it makes it again, empty); TopicNotFound if it does not exist.
    """
    _, live = await check_topic_deletable(transport, topic, force=force)
    await transport.delete_topic(topic)
    return live


async def describe_group(transport: Transport, group: str) -> GroupInfo:
    """One group's partitions and live members; GroupNotFound if it has neither
    committed offsets nor live members."""
    infos = await transport.groups()
    for info in infos:
        if info.group == group:
            return info
    known = ", ".join(i.group for i in infos) or "none yet"
    raise GroupNotFound(
        f"group {group!r} does not exist in {transport.url} (no committed offsets, no live "
        f"members); known groups: {known}"
    )


def is_internal(group: str, topic: str) -> bool:
    """Whether ``topic`` is one of ``group``'s own dead-letter topics, ``<group>.retry``
    (which it reads) or ``<group>.dlq``: shown and reset only when asked for."""
    return topic in (retry_topic(group), dlq_topic(group))


async def group_rows(
    transport: Transport, group: str | None = None, *, internal: bool = False
) -> list[GroupPartition]:
    """Per group, topic and partition: committed and end offset, lag, owning member;
    the groups' internal topics (:func:`is_internal`) only with ``internal``."""
    infos = [await describe_group(transport, group)] if group else await transport.groups()
    rows = [
        row
        for info in infos
        for row in info.partitions
        if internal or not is_internal(row.group, row.topic)
    ]
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


@dataclass(frozen=True, slots=True)
class Lag:
    """Where one group stands in one partition."""

    group: str
    topic: str
    partition: int
    messages: int  # events still to handle (GroupPartition.lag)
    seconds: float  # age of the oldest of them, by its append time (0 when none)


STAMPS_KEPT = 100_000
"""Append times :func:`partition_lag` keeps in a caller's ``stamps`` (then starts again)."""


async def partition_lag(
    transport: Transport,
    row: GroupPartition,
    now: float,
    stamps: dict[tuple[str, int, int], int] | None = None,
) -> Lag:
    """``row``'s lag, with the age at ``now`` (seconds since the epoch) of its oldest
    unhandled event: one record read. For the metrics and the catalog's SLAs.

    ``stamps``: the append times (ms) of the records read so far, by (topic, partition,
    offset), kept by a caller that asks again and again (the dashboard): a record read
    once is not read again while its group has not moved on (at most
    :data:`STAMPS_KEPT` kept)."""
    seconds = 0.0
    if row.lag:
        first = row.start if row.committed is None else max(row.committed, row.start)
        place = (row.topic, row.partition, first)
        stamp = None if stamps is None else stamps.get(place)
        if stamp is None:
            records = await transport.read(row.topic, row.partition, first, 1)
            if records and records[0].offset == first:
                stamp = records[0].timestamp
                if stamps is not None:
                    if len(stamps) >= STAMPS_KEPT:
                        stamps.clear()
                    stamps[place] = stamp
            elif records:
                stamp = records[0].timestamp
        if stamp is not None:
            seconds = max(now - stamp / 1000, 0.0)
    return Lag(row.group, row.topic, row.partition, row.lag, seconds)


async def dead_letter_counts(
    transport: Transport,
    rows: Iterable[GroupPartition],
    logs: dict[str, DeadLetterLog] | None = None,
    *,
    resolved: bool = False,
) -> dict[tuple[str, str, int], int]:
    """Per (group, topic, partition) of ``rows``' groups, the dead letters waiting for
    an operator of the events read from there (absent: none); ``logs`` and ``resolved``
    as :func:`~tidings.dead_letters.waiting` keeps them between calls."""
    by_group = await waiting(transport, sorted({r.group for r in rows}), logs, resolved=resolved)
    return {(g, t, p): n for g, counts in by_group.items() for (t, p), n in counts.items()}


def group_row_json(row: GroupPartition, dlq: int, health: Health | None = None) -> dict[str, Any]:
    """The documented JSON of one row: exactly :data:`GROUP_JSON_KEYS` (``dlq``: the
    dead letters waiting for an operator of the events read from the row's partition;
    the health keys: see :func:`~tidings.admin.health_json`)."""
    return {
        "group": row.group,
        "topic": row.topic,
        "partition": row.partition,
        "committed": row.committed,
        "end": row.end,
        "lag": row.lag,
        "lost": row.lost,
        "dlq": dlq,
        **health_json(health),
    }


GroupStatus = Literal["stopped", "partial", "lagging", "ok"]
"""A group's status on a topic, as ``tidings groups`` shows it (docs/guide.md,
"Operating")."""


@dataclass(frozen=True, slots=True)
class GroupTopic:
    """One line of ``tidings groups``: where a group stands on one topic, its
    partitions summed, as ``kafka-consumer-groups --describe`` summarised."""

    group: str
    topic: str
    partitions: int
    lag: int
    lost: int
    dlq: int  # dead letters waiting of the events read from this topic
    members: tuple[str, ...]  # the live members holding its partitions, by name
    held: int  # how many of its partitions a live member holds

    @property
    def status(self) -> GroupStatus:
        """``stopped``: no live member holds a partition of it; ``partial``: some
        partitions are held and some not (a member joining or leaving, a lease gone);
        ``lagging``: all held, events to handle; ``ok``: all held, nothing to handle."""
        if not self.held:
            return "stopped"
        if self.held < self.partitions:
            return "partial"
        return "lagging" if self.lag else "ok"


def group_topics(
    rows: Iterable[GroupPartition], dlq: Mapping[tuple[str, str, int], int]
) -> list[GroupTopic]:
    """``rows`` (from :func:`group_rows`) summed per group and topic; ``dlq`` as
    :func:`dead_letter_counts` gives it."""
    by: dict[tuple[str, str], list[GroupPartition]] = {}
    for row in rows:
        by.setdefault((row.group, row.topic), []).append(row)
    return [
        GroupTopic(
            group=group,
            topic=topic,
            partitions=len(part),
            lag=sum(r.lag for r in part),
            lost=sum(r.lost for r in part),
            dlq=sum(dlq.get((group, topic, r.partition), 0) for r in part),
            members=tuple(sorted({r.member for r in part if r.member is not None})),
            held=sum(1 for r in part if r.member is not None),
        )
        for (group, topic), part in sorted(by.items())
    ]


def group_topic_json(line: GroupTopic, health: GroupHealth | None = None) -> dict[str, Any]:
    """The documented JSON of one line: exactly :data:`GROUP_TOPIC_JSON_KEYS` (the
    health keys: see :func:`~tidings.admin.health_json`)."""
    return {
        "group": line.group,
        "topic": line.topic,
        "partitions": line.partitions,
        "lag": line.lag,
        "lost": line.lost,
        "dlq": line.dlq,
        "members": list(line.members),
        "status": line.status,
        **health_json(health),
    }
