"""Reading the log into the tree of ``tidings trace``: :class:`Tracer`, :func:`trace`
and :func:`follow`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from typing import Literal

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode
from tidings.dead_letters import DeadLetter, DeadLetterLog, dlq_topic
from tidings.envelope import Event
from tidings.errors import DecodeError, TopicNotFound
from tidings.middleware.cancellation import CANCELLATIONS_TOPIC
from tidings.tail import wait_for_appends
from tidings.trace.tree import (
    Change,
    GroupStatus,
    Trace,
    TraceNode,
    changes,
    dead_status,
    span,
)
from tidings.transport import GroupPartition, Record, TopicInfo, Transport

__all__ = ["DEFAULT_SCAN", "Tracer", "follow", "is_traced_topic", "trace"]

DEFAULT_SCAN = 10_000
"""Records read back from the end of each partition when no time window is given."""
PAGE = 500  # records read at a time per partition
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]+")


def is_traced_topic(name: str) -> bool:
    """Whether a trace reads ``name``: a user topic, not tidings' own (``_tidings.*``) nor
    a group's dead letters or replays (those are read as each group's status); but the
    cancellations (a cancelled chain shows its cancellation)."""
    if name == CANCELLATIONS_TOPIC:
        return True
    return not (name.startswith("_tidings") or name.endswith((".dlq", ".retry")))


class Tracer:
    """The events of one id, read from ``transport``'s user topics.

    The window: from ``since`` (ms since the epoch) on, else the last ``scan`` records
    of each partition (where offsets are not dense, the last ``scan`` times the
    partition count of the topic), as found on the first :meth:`refresh`; partitions and topics
    created later are read from their start. Each refresh reads what was appended since
    the previous one, and the groups' offsets and dead letters again.
    """

    def __init__(
        self,
        transport: Transport,
        id: str,
        *,
        scan: int = DEFAULT_SCAN,
        since: int | None = None,
        dead_logs: dict[str, DeadLetterLog] | None = None,
    ) -> None:
        self.transport = transport
        self.id = id
        self.scan = scan
        self.since = since
        self.scanned = 0
        self._correlation = id  # the correlation read; an event id's, once found
        self._kind: Literal["correlation", "event"] = "correlation"
        self._events: dict[str, TraceNode] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._window: dict[tuple[str, int], int] = {}
        self._topics: dict[str, TopicInfo] = {}
        self._rows: dict[tuple[str, str, int], GroupPartition] = {}
        # The groups' dead letters (``values=False``), kept by a caller that traces
        # again and again (the dashboard) so that each refresh reads only what is new.
        self._dead: dict[str, DeadLetterLog] = {} if dead_logs is None else dead_logs
        self._again = False
        self._needles = _needles(id, id)

    async def refresh(self) -> None:
        """Read what is new in every user topic, then the groups' offsets and dead letters."""
        infos = await self.transport.topics()
        self._topics = {t.name: t for t in infos if is_traced_topic(t.name)}
        for info in self._topics.values():
            await self._window_of(info)
        self._again = True
        while self._again:  # once more if an event id's correlation was found on the way
            self._again = False
            for info in self._topics.values():
                for p in info.partitions:
                    await self._read(info.name, p.partition)
        rows = [r for g in await self.transport.groups() for r in g.partitions]
        self._rows = {(r.group, r.topic, r.partition): r for r in rows}
        names = {t.name for t in infos}
        for group in sorted(
            {r.group for r in rows} | {n[:-4] for n in names if n.endswith(".dlq")}
        ):
            if dlq_topic(group) in names and group not in self._dead:
                self._dead[group] = DeadLetterLog(self.transport, group, values=False)
        for log in self._dead.values():
            await log.refresh()

    async def _window_of(self, info: TopicInfo) -> None:
        new = [p for p in info.partitions if (info.name, p.partition) not in self._window]
        if not new:
            return
        first = not self._window
        by_time: Mapping[int, int] = {}
        if self.since is not None and first:
            by_time = await self.transport.offsets_for_time(info.name, self.since)
        for p in new:
            tp = (info.name, p.partition)
            if not first:
                start = p.start  # appeared while following: all of it is new
            elif self.since is not None:
                start = max(by_time.get(p.partition, p.start), p.start)
            elif self.transport.capabilities.dense_offsets:
                start = max(p.end - self.scan, p.start)
            else:  # (NATS: one sequence for the whole topic, shared by its partitions)
                start = max(p.end - self.scan * len(info.partitions), p.start)
            self._window[tp] = self._positions[tp] = start

    async def _read(self, topic: str, partition: int) -> None:
        tp = (topic, partition)
        while True:
            try:
                records = await self.transport.read(topic, partition, self._positions[tp], PAGE)
            except TopicNotFound:
                return  # deleted since it was listed: nothing more of it to read
            if not records:
                return
            self._positions[tp] = records[-1].offset + 1
            self.scanned += len(records)
            for record in records:
                self._take(record)

    def _take(self, record: Record) -> None:
        if self._needles is not None and not any(n in record.value for n in self._needles):
            return  # neither the id nor the correlation id is in it: not decoded
        try:
            # The producer may have allowed larger events than the default: read what is there.
            event = decode(record.value, max(len(record.value), DEFAULT_MAX_EVENT_BYTES))
        except DecodeError:
            return  # not an event of anyone's: `tidings tail` reports it
        if event.id == self.id and self._kind == "correlation":
            self._found_event(event)
        if event.id != self.id and (event.correlationid or event.id) != self._correlation:
            return
        known = self._events.get(event.id)
        if known is None:
            self._events[event.id] = TraceNode(event, record)
        elif (known.record.topic, known.record.partition, known.record.offset) != (
            record.topic,
            record.partition,
            record.offset,
        ):
            known.copies.append(record)

    def _found_event(self, event: Event) -> None:
        """``id`` is this event's: trace what it caused, within its correlation. Events
        of that correlation read before now were not kept: read the window again."""
        self._kind = "event"
        correlation = event.correlationid or event.id
        if correlation != self._correlation:
            self._correlation = correlation
            self._needles = _needles(self.id, correlation)
            self._positions.update(self._window)
            self._events.clear()
            self._again = True

    def trace(self) -> Trace:
        """The tree of what was read so far, with each group's status now."""
        nodes = {i: _fresh(n) for i, n in self._events.items()}
        dead = self._dead_letters_by_position({_place(n.record) for n in nodes.values()})
        roots: list[TraceNode] = []
        for node in sorted(nodes.values(), key=_order):
            node.groups = self._statuses(node, dead)
            cause = node.event.causationid
            parent = nodes.get(cause) if cause is not None else None
            if parent is not None and parent is not node:
                node.after_cause = (node.event.time - parent.event.time).total_seconds()
            target = self._kind == "event" and node.event.id == self.id
            if parent is not None and parent is not node and not target:
                parent.children.append(node)
            elif target or self._kind == "correlation":
                # (An event id's tree starts at that event, whatever caused it.)
                node.cause_seen = parent is not None or cause in (None, self._correlation, self.id)
                roots.append(node)
        return Trace(
            id=self.id,
            kind=self._kind,
            correlationid=self._correlation if roots else None,
            roots=tuple(roots),
            span=span([n for r in roots for n in r.walk()]),
            scanned=self.scanned,
            topics=len(self._topics),
        )

    def _dead_letters_by_position(
        self, places: set[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], dict[str, DeadLetter]]:
        """Per place of an event (of ``places``: those of the trace), each group's latest
        dead letter of it (a replay that failed again is a later entry)."""
        out: dict[tuple[str, int, int], dict[str, DeadLetter]] = {}
        for group, log in self._dead.items():
            for entry in log.entries.values():
                place = (entry.topic, entry.partition, entry.offset)
                if place not in places:
                    continue
                by_group = out.setdefault(place, {})
                known = by_group.get(group)
                if known is None or entry.dead_at >= known.dead_at:
                    by_group[group] = entry
        return out

    def _statuses(
        self, node: TraceNode, dead_letters: Mapping[tuple[str, int, int], dict[str, DeadLetter]]
    ) -> list[GroupStatus]:
        r = node.record
        groups = {g for (g, t, _) in self._rows if t == r.topic}
        dead = dead_letters.get((r.topic, r.partition, r.offset), {})
        out = []
        for group in sorted(groups | dead.keys()):
            entry = dead.get(group)
            if entry is not None:
                out.append(dead_status(group, entry, self._dead[group].states[entry.entry]))
            else:
                out.append(self._offset_status(group, r))
        return out

    def _offset_status(self, group: str, r: Record) -> GroupStatus:
        row = self._rows.get((group, r.topic, r.partition))
        committed = None if row is None else row.committed
        if committed is not None and r.offset < committed:
            return GroupStatus(group, "handled")
        behind = None
        if self.transport.capabilities.dense_offsets:
            info = self._topics.get(r.topic)
            parts = info.partitions if info is not None else ()
            start = next((p.start for p in parts if p.partition == r.partition), 0)
            behind = max(r.offset - max(committed or 0, start), 0)
        return GroupStatus(group, "pending", behind=behind)


async def trace(
    transport: Transport,
    id: str,
    *,
    scan: int = DEFAULT_SCAN,
    since: int | None = None,
    dead_logs: dict[str, DeadLetterLog] | None = None,
) -> Trace:
    """The causal tree of ``id`` (a correlation id or an event id) as stored now; see
    :class:`Tracer` for the window read (and ``dead_logs``)."""
    tracer = Tracer(transport, id, scan=scan, since=since, dead_logs=dead_logs)
    await tracer.refresh()
    return tracer.trace()


async def follow(
    tracer: Tracer, stop: asyncio.Event, *, poll: float = 0.5
) -> AsyncGenerator[tuple[Trace, list[Change]], None]:
    """After ``tracer``'s first refresh: each trace in which something moved (new
    events, a group's status), with what moved, until ``stop`` is set.

    Appends wake it at once where the transport signals them; a group's commit is not
    an append, so statuses are read again at least every ``poll`` seconds.
    """
    before = tracer.trace()
    while not stop.is_set():
        await wait_for_appends(tracer.transport, poll, stop)
        if stop.is_set():
            return
        await tracer.refresh()
        after = tracer.trace()
        moved = changes(before, after)
        if moved:
            yield after, moved
        before = after


def _needles(*ids: str) -> tuple[bytes, ...] | None:
    """What a record matching ``ids`` must contain: each id as it is written in the
    structured JSON document every transport reads back. Only for ids of characters no
    JSON encoder escapes (UUIDs, the usual request ids); None otherwise: decode every
    record."""
    if not all(_PLAIN_ID.fullmatch(i) for i in ids):
        return None
    return tuple({i.encode("ascii") for i in ids})


def _place(record: Record) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _fresh(node: TraceNode) -> TraceNode:
    """A copy of a kept node without the links of a previous trace."""
    return TraceNode(node.event, node.record, copies=list(node.copies))


def _order(node: TraceNode) -> tuple[datetime, int, str, int, int]:
    r = node.record
    return (node.event.time, r.timestamp, r.topic, r.partition, r.offset)
