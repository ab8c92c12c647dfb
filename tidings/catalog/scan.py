"""What the log itself shows of its event types: the newest events of each topic, read
outside any group, and what they tell (decision 0022): which type caused which
(``causationid``), who published each type where, and an example of each version.

Bounded: at most ``limit`` events per topic, the newest; on NATS, whose offsets are not
dense, a partition may give fewer.

A caller that scans again and again (the dashboard) passes a :class:`Kept`: each
partition's newest records are kept decoded between scans, so that a scan reads only
what was appended since the last one, and a log that did not change at all gives back
the last :class:`Observed` as it was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode
from tidings.envelope import Event
from tidings.errors import DecodeError
from tidings.transport import Record, TopicInfo, Transport

__all__ = ["DEFAULT_SCAN", "Kept", "Observed", "Seen", "is_scanned", "scan"]

DEFAULT_SCAN = 2000
"""Events read per topic by default: the newest."""
PAGE = 500


@dataclass
class Seen:
    """A (type, source, topic) seen in the scan: how often, the versions, the newest."""

    count: int = 0
    versions: set[int] = field(default_factory=set)
    last: datetime | None = None


@dataclass
class Observed:
    """What the scan found."""

    flows: Counter[tuple[str, str]] = field(default_factory=Counter)  # (cause, effect)
    examples: dict[tuple[str, int | None], Event] = field(default_factory=dict)  # newest
    producers: dict[tuple[str, str, str], Seen] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)  # topic -> events read
    undecodable: int = 0


_Read = tuple[Record, Event | None]  # a record and its event (None: undecodable)


@dataclass
class Kept:
    """What the scans so far read, for the next to read only what is new: per
    partition, the offsets read (from, to) and those records, decoded (at most the
    scan's ``limit`` per partition); and the last result, with the topics' offsets it
    was read at."""

    parts: dict[tuple[str, int], tuple[int, int, list[_Read]]] = field(default_factory=dict)
    last: tuple[object, Observed] | None = None


def is_scanned(topic: str) -> bool:
    """Whether the scan reads ``topic``: not the registry's, nor a group's dead letters
    or retries (group names have no dots, so ``<group>.dlq`` is one of those)."""
    if topic.startswith("_tidings."):
        return False
    head, dot, tail = topic.rpartition(".")
    return not (dot and "." not in head and tail in ("dlq", "retry"))


async def scan(
    transport: Transport, *, limit: int = DEFAULT_SCAN, kept: Kept | None = None
) -> Observed:
    """Read the newest ``limit`` events of every topic :func:`is_scanned` keeps and tell
    what they show (with ``kept``: reading only what is new since the last scan)."""
    infos = [i for i in await transport.topics() if is_scanned(i.name) and limit > 0]
    key = (limit, [(i.name, [(p.partition, p.start, p.end) for p in i.partitions]) for i in infos])
    if kept is not None and kept.last is not None and kept.last[0] == key:
        return kept.last[1]  # nothing appended nor removed since
    seen = Observed()
    events: list[tuple[str, Event]] = []
    for info in infos:
        records = await _newest(transport, info, limit, kept if kept is not None else Kept())
        seen.scanned[info.name] = len(records)
        for _, event in records:
            if event is None:
                seen.undecodable += 1
            else:
                events.append((info.name, event))
    kinds = {event.id: event.type for _, event in events}
    for topic, event in events:  # oldest first: the last one kept is the newest
        cause = kinds.get(event.causationid) if event.causationid else None
        if cause is not None:
            seen.flows[(cause, event.type)] += 1
        seen.examples[(event.type, event.dataversion)] = event
        who = seen.producers.setdefault((event.type, event.source, topic), Seen())
        who.count += 1
        if event.dataversion is not None:
            who.versions.add(event.dataversion)
        if who.last is None or event.time > who.last:
            who.last = event.time
    if kept is not None:
        kept.last = (key, seen)
        names = {i.name for i in infos}
        for gone in [tp for tp in kept.parts if tp[0] not in names]:
            del kept.parts[gone]  # deleted: a new topic of that name starts again
    return seen


async def _newest(transport: Transport, info: TopicInfo, limit: int, kept: Kept) -> list[_Read]:
    """The newest ``limit`` records of the topic, decoded, oldest first (by append
    time); what ``kept`` holds of a partition is not read again."""
    found: list[_Read] = []
    for p in info.partitions:
        first = max(p.start, p.end - limit)
        since, end, known = kept.parts.get((info.name, p.partition), (first, first, []))
        if since > first or end > p.end or end < first:  # other bounds, or far behind
            end, known = first, []
        known = [r for r in known if r[0].offset >= first]
        offset = end
        while offset < p.end:
            page = await transport.read(info.name, p.partition, offset, min(PAGE, p.end - offset))
            if not page:
                break
            known.extend((record, _decoded(record)) for record in page)
            offset = page[-1].offset + 1
        kept.parts[(info.name, p.partition)] = (first, offset, known)
        found.extend(known)
    found.sort(key=lambda r: (r[0].timestamp, r[0].partition, r[0].offset))
    return found[-limit:]


def _decoded(record: Record) -> Event | None:
    try:
        return decode(record.value, _room(record))
    except DecodeError:
        return None


def _room(record: Record) -> int:
    # The producer may have allowed larger events than the default: read what is there.
    return max(len(record.value), DEFAULT_MAX_EVENT_BYTES)
