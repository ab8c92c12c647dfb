"""What the log itself shows of its event types: the newest events of each topic, read
outside any group, and what they tell (decision 0022): which type caused which
(``causationid``), who published each type where, and an example of each version.

Bounded: at most ``limit`` events per topic, the newest; on NATS, whose offsets are not
dense, a partition may give fewer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode
from tidings.envelope import Event
from tidings.errors import DecodeError
from tidings.transport import Record, TopicInfo, Transport

__all__ = ["DEFAULT_SCAN", "Observed", "Seen", "is_scanned", "scan"]

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


def is_scanned(topic: str) -> bool:
    """Whether the scan reads ``topic``: not the registry's, nor a group's dead letters
    or retries (group names have no dots, so ``<group>.dlq`` is one of those)."""
    if topic.startswith("_tidings."):
        return False
    head, dot, tail = topic.rpartition(".")
    return not (dot and "." not in head and tail in ("dlq", "retry"))


async def scan(transport: Transport, *, limit: int = DEFAULT_SCAN) -> Observed:
    """Read the newest ``limit`` events of every topic :func:`is_scanned` keeps and tell
    what they show."""
    seen = Observed()
    events: list[tuple[str, Event]] = []
    for info in await transport.topics():
        if not is_scanned(info.name) or limit <= 0:
            continue
        records = await _newest(transport, info, limit)
        seen.scanned[info.name] = len(records)
        for record in records:
            try:
                events.append((info.name, decode(record.value, _room(record))))
            except DecodeError:
                seen.undecodable += 1
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
    return seen


async def _newest(transport: Transport, info: TopicInfo, limit: int) -> list[Record]:
    """The newest ``limit`` records of the topic, oldest first (by append time)."""
    found: list[Record] = []
    for p in info.partitions:
        offset = max(p.start, p.end - limit)
        while offset < p.end:
            page = await transport.read(info.name, p.partition, offset, min(PAGE, p.end - offset))
            if not page:
                break
            found.extend(page)
            offset = page[-1].offset + 1
    found.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return found[-limit:]


def _room(record: Record) -> int:
    # The producer may have allowed larger events than the default: read what is there.
    return max(len(record.value), DEFAULT_MAX_EVENT_BYTES)
