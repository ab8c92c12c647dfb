"""``tidings tail``: a topic's events in append order, outside any group."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from tidings.admin import topic_info
from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode
from tidings.contracts import Registry
from tidings.envelope import Event, validate_type
from tidings.errors import DecodeError, EventError
from tidings.shredding.fields import EXTENSION, Shredder, shown
from tidings.transport import Record, Transport

__all__ = ["TailEntry", "TailFilter", "tail", "wait_for_appends"]


@dataclass(frozen=True, slots=True)
class TailFilter:
    """Which events :func:`tail` yields; ``None`` matches anything."""

    types: frozenset[str] | None = None
    subject: str | None = None
    correlation_id: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        for t in self.types or ():
            validate_type(t)  # a misspelt type would otherwise quietly match nothing

    def matches(self, event: Event) -> bool:
        return (
            (self.types is None or event.type in self.types)
            and (self.subject is None or event.subject == self.subject)
            and (self.correlation_id is None or event.correlationid == self.correlation_id)
            and (self.id is None or event.id == self.id)
        )


@dataclass(frozen=True, slots=True)
class TailEntry:
    """One record seen by :func:`tail`: its event, or why it cannot be decoded;
    ``upcast_from``: the version it was written as, if upcast to a later one."""

    record: Record
    event: Event | None
    error: str | None = None
    upcast_from: int | None = None


async def tail(
    transport: Transport,
    topic: str,
    start: Mapping[int, int] | None = None,
    *,
    where: TailFilter | None = None,
    limit: int | None = None,
    follow: bool = False,
    stop: asyncio.Event | None = None,
    page: int = 500,
    poll: float = 1.0,
    upcast: Registry | None = None,
    reveal: Shredder | None = None,
) -> AsyncGenerator[TailEntry, None]:
    """The records of every partition of ``topic`` from ``start`` (default: earliest),
    outside any group, in append order (timestamp, then partition and offset).

    Yields matching events, and every undecodable record (with ``error``; those do not
    count towards ``limit``). Without ``follow`` it ends at the end offsets it found on
    starting; with it, it waits for new records until ``stop`` is set. With ``upcast``
    (an app's registry), an event its upcasters read as a later version is shown as
    that version, decoded as a handler gets it (an error if that fails). Personal
    fields are masked, or opened with ``reveal`` (a :class:`tidings.shredding.Shredder`).
    """
    info = await topic_info(transport, topic)
    where = where or TailFilter()
    positions = {p.partition: p.start for p in info.partitions}
    positions.update(start or {})
    ends = None if follow else {p.partition: p.end for p in info.partitions}
    matched = 0
    while True:
        async with contextlib.aclosing(_merged(transport, topic, positions, ends, page)) as records:
            async for record in records:
                if stop is not None and stop.is_set():
                    return
                entry = _decoded(record, reveal)
                if upcast is not None and entry.event is not None:
                    entry = _upcast(entry, entry.event, upcast)
                if entry.event is not None and not where.matches(entry.event):
                    continue
                yield entry
                if entry.event is not None:
                    matched += 1
                    if limit is not None and matched >= limit:
                        return
        if not follow:
            return
        await wait_for_appends(transport, poll, stop)
        if stop is not None and stop.is_set():
            return


def _decoded(record: Record, reveal: Shredder | None) -> TailEntry:
    try:
        # The producer may have allowed larger events than the default: read what is there.
        event = decode(record.value, max(len(record.value), DEFAULT_MAX_EVENT_BYTES))
        if EXTENSION in event.extensions:
            event = event.with_(data=shown(event.id, event.data, reveal))
    except DecodeError as exc:
        return TailEntry(record, None, str(exc))
    return TailEntry(record, event)


def _upcast(entry: TailEntry, event: Event, registry: Registry) -> TailEntry:
    """``entry`` at the version ``registry``'s upcasters lead its event to."""
    written = event.dataversion
    read = registry.read_version(event.type, written)
    if read == written:
        return entry
    try:
        payload = registry.decode_payload(event.type, written, event.data)
    except EventError as exc:
        return TailEntry(entry.record, None, f"cannot be upcast: {exc}")
    contract = registry.lookup(event.type, read)
    data = payload.model_dump(mode="json")
    schema = contract.schema_uri if contract is not None else None
    changed = event.with_(data=data, dataversion=read, dataschema=schema)
    return TailEntry(entry.record, changed, upcast_from=written)


async def _merged(
    transport: Transport,
    topic: str,
    positions: dict[int, int],
    ends: Mapping[int, int] | None,
    page: int,
) -> AsyncGenerator[Record, None]:
    """A k-way merge of the partitions by append time, reading ``page`` records at a
    time; ``positions`` moves past what was read. Ends when every partition is read up
    to ``ends`` (or, without ends, to what is stored now)."""
    buffers: dict[int, deque[Record]] = {p: deque() for p in positions}
    live = set(positions)
    while True:
        for p in sorted(live):
            if not buffers[p]:
                want = page if ends is None else min(page, ends[p] - positions[p])
                records = await transport.read(topic, p, positions[p], want) if want > 0 else []
                if ends is not None:
                    records = [r for r in records if r.offset < ends[p]]
                if not records:
                    live.discard(p)
                    continue
                buffers[p].extend(records)
                positions[p] = records[-1].offset + 1
        if not live:
            return
        first = min(live, key=lambda q: (buffers[q][0].timestamp, q))
        yield buffers[first].popleft()


async def wait_for_appends(
    transport: Transport, timeout: float, stop: asyncio.Event | None
) -> None:
    """Return when something may have been appended to ``transport``, after ``timeout``
    seconds, or when ``stop`` is set: what a follower outside a group waits on."""
    if stop is None:
        await transport.wait_for_appends(timeout)
        return
    waiter = asyncio.ensure_future(transport.wait_for_appends(timeout))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
