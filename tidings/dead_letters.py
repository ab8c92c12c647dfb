"""Dead letters: events a group could not handle, kept on the same transport.

Each group ``G`` owns two topics:

- ``G.dlq`` holds its dead letters. An *entry* is a JSON document with the original
  record byte-for-byte (base64) and why it is there: the error's type, message and
  traceback, the attempts, the first and last failure times, the group, the handler,
  and where the event was (topic, partition, offset). Its record key is the original
  key, so one key's entries stay in order in one partition. A *mark* records what
  happened to entries later: ``replayed`` (sent to ``G.retry``), ``resolved`` (the
  replayed event was handled, or dead-lettered again as a new entry) or ``purged``.
  The state of the queue is the fold of the topic: no record is ever rewritten, so
  the dead letters work on any transport that can append and read.
- ``G.retry`` holds replayed entries. Only group ``G`` reads it (the worker
  subscribes each group to its own retry topic), so a replay never reaches the other
  groups of the original topic. The record is the entry itself: the worker handles
  the original event as if read from its original topic, and marks the entry
  resolved afterwards, so a replay run twice is handled once.

A *sequenced* group (``app.group(name, sequenced=True)``) parks later events of a key
behind its unresolved dead letters, in order: per-key order then survives the failure
and the replay. The order of a key's dead letters is the original offset, so an
event that fails again on replay keeps its place before the ones parked behind it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson

from tidings.envelope import new_id
from tidings.errors import DecodeError, TidingsError, TopicNotFound, TransportError
from tidings.middleware.retry import RetriesExhausted
from tidings.transport import Record, Transport

if TYPE_CHECKING:
    from tidings.middleware.base import Delivery

__all__ = [
    "DeadLetter",
    "DeadLetterLog",
    "DeadLetterQueue",
    "Filter",
    "Parked",
    "Reason",
    "State",
    "dlq_topic",
    "retry_topic",
]

log = logging.getLogger("tidings.dead_letters")

Reason = Literal["failed", "poison", "parked"]
State = Literal["dead", "replayed", "resolved", "purged"]
UNRESOLVED: frozenset[str] = frozenset({"dead", "replayed"})
TRACEBACK_LIMIT = 16_384  # characters kept of a traceback
WRITE_RETRY = 1.0  # seconds between attempts to write a dead letter while the log is down


def dlq_topic(group: str) -> str:
    """The topic holding ``group``'s dead letters."""
    return f"{group}.dlq"


def retry_topic(group: str) -> str:
    """The topic only ``group`` reads, where its dead letters are replayed."""
    return f"{group}.retry"


def _type_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry. ``value`` is the original record, byte for byte.

    ``event_id``, ``type`` and ``correlationid`` are None when the record could not be
    decoded. ``dlq_partition``/``dlq_offset`` say where the entry itself is stored.
    """

    entry: str
    group: str
    reason: Reason
    topic: str
    partition: int
    offset: int
    timestamp: int  # the original record's append time, ms
    key: str | None
    value: bytes
    error_type: str
    error_message: str
    traceback: str | None
    attempts: int
    first_failure: float  # Unix seconds
    last_failure: float
    dead_at: float
    event_id: str | None = None
    type: str | None = None
    correlationid: str | None = None
    handler: str | None = None
    parked_behind: str | None = None  # the entry this one waits behind (sequenced groups)
    replay_of: str | None = None  # the entry whose replay failed again
    dlq_partition: int = -1
    dlq_offset: int = -1

    def to_json(self) -> dict[str, Any]:
        """The documented JSON form (``value`` base64-encoded)."""
        doc: dict[str, Any] = {
            "kind": "entry",
            "entry": self.entry,
            "group": self.group,
            "reason": self.reason,
            "event_id": self.event_id,
            "type": self.type,
            "correlationid": self.correlationid,
            "handler": self.handler,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": self.key,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
            "dead_at": self.dead_at,
            "parked_behind": self.parked_behind,
            "replay_of": self.replay_of,
            "value": base64.b64encode(self.value).decode("ascii"),
        }
        return doc

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, partition: int = -1, offset: int = -1) -> DeadLetter:
        """Parse an entry; DecodeError if it is not one."""
        try:
            return cls(
                entry=str(doc["entry"]),
                group=str(doc["group"]),
                reason=doc["reason"],
                topic=str(doc["topic"]),
                partition=int(doc["partition"]),
                offset=int(doc["offset"]),
                timestamp=int(doc["timestamp"]),
                key=doc.get("key"),
                value=base64.b64decode(doc["value"], validate=True),
                error_type=str(doc["error_type"]),
                error_message=str(doc["error_message"]),
                traceback=doc.get("traceback"),
                attempts=int(doc["attempts"]),
                first_failure=float(doc["first_failure"]),
                last_failure=float(doc["last_failure"]),
                dead_at=float(doc["dead_at"]),
                event_id=doc.get("event_id"),
                type=doc.get("type"),
                correlationid=doc.get("correlationid"),
                handler=doc.get("handler"),
                parked_behind=doc.get("parked_behind"),
                replay_of=doc.get("replay_of"),
                dlq_partition=partition,
                dlq_offset=offset,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise DecodeError(f"not a dead-letter entry: {exc!r}") from None

    @classmethod
    def from_bytes(cls, value: bytes, *, partition: int = -1, offset: int = -1) -> DeadLetter:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not a dead-letter entry: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "entry":
            raise DecodeError("not a dead-letter entry: no 'kind': 'entry'")
        return cls.from_json(doc, partition=partition, offset=offset)

    def original(self) -> Record:
        """The record as it was read from its original topic."""
        return Record(self.topic, self.partition, self.offset, self.timestamp, self.key, self.value)


def _mark(state: State, entries: Sequence[str]) -> bytes:
    return orjson.dumps(
        {"kind": "mark", "state": state, "entries": list(entries), "at": time.time()}
    )


@dataclass
class DeadLetterLog:
    """A group's dead letters as read from its ``.dlq`` topic, refreshed incrementally.

    ``refresh()`` reads only what was appended since the last call, so a worker can
    call it whenever it needs to be sure (a partition changed hands, a replayed entry
    arrived) without re-reading the queue.
    """

    transport: Transport
    group: str
    entries: dict[str, DeadLetter] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    # (original topic, key) -> unresolved entry ids of that key, for sequenced groups
    by_key: dict[tuple[str, str | None], set[str]] = field(default_factory=dict)
    # (topic, partition, offset, handler) -> the latest entry for that event and handler
    by_position: dict[tuple[str, int, int, str | None], str] = field(default_factory=dict)
    _positions: dict[int, int] = field(default_factory=dict)
    _partitions: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def topic(self) -> str:
        return dlq_topic(self.group)

    async def refresh(self) -> None:
        async with self._lock:
            if not self._partitions or not self._positions:
                for info in await self.transport.topics():
                    if info.name == self.topic:
                        self._partitions = len(info.partitions)
                        for p in info.partitions:
                            self._positions.setdefault(p.partition, p.start)
                        break
            for partition in range(self._partitions):
                position = self._positions.get(partition, 0)
                while True:
                    records = await self.transport.read(self.topic, partition, position, 1000)
                    for record in records:
                        self._apply(record)
                    if records:
                        position = records[-1].offset + 1
                    if len(records) < 1000:
                        break
                self._positions[partition] = position

    def _apply(self, record: Record) -> None:
        try:
            doc = orjson.loads(record.value)
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if kind == "entry":
                entry = DeadLetter.from_json(doc, partition=record.partition, offset=record.offset)
                self.add(entry)
            elif kind == "mark":
                state = doc["state"]
                for entry_id in doc["entries"]:
                    self.set_state(str(entry_id), state)
            else:
                raise DecodeError("neither an entry nor a mark")
        except (orjson.JSONDecodeError, DecodeError, KeyError, TypeError) as exc:
            log.warning(
                "%s[%d]@%d is not a dead-letter record, ignored: %r",
                record.topic, record.partition, record.offset, exc,
            )  # fmt: skip

    def add(self, entry: DeadLetter) -> None:
        self.entries[entry.entry] = entry
        self.states.setdefault(entry.entry, "dead")
        self.by_position[(entry.topic, entry.partition, entry.offset, entry.handler)] = entry.entry
        self._index(entry.entry)

    def waiting_for(
        self, topic: str, partition: int, offset: int, handler: str | None
    ) -> DeadLetter | None:
        """The entry still ``dead`` for this event and handler, if there is one: a
        worker that crashed after writing it and before committing meets the event
        again, and must not dead-letter it twice."""
        entry_id = self.by_position.get((topic, partition, offset, handler))
        if entry_id is None or self.states.get(entry_id) != "dead":
            return None
        return self.entries[entry_id]

    def set_state(self, entry_id: str, state: State) -> None:
        current = self.states.get(entry_id)
        # Final states stay final: a late "replayed" mark must not revive a resolved entry.
        if current in ("resolved", "purged") and state in UNRESOLVED:
            return
        self.states[entry_id] = state
        self._index(entry_id)

    def _index(self, entry_id: str) -> None:
        entry = self.entries.get(entry_id)
        if entry is None:
            return
        slot = (entry.topic, entry.key)
        if self.states.get(entry_id, "dead") in UNRESOLVED:
            self.by_key.setdefault(slot, set()).add(entry_id)
        else:
            ids = self.by_key.get(slot)
            if ids is not None:
                ids.discard(entry_id)
                if not ids:
                    del self.by_key[slot]

    def state(self, entry_id: str) -> State | None:
        return self.states.get(entry_id)

    def blocker(
        self, topic: str, key: str | None, offset: int, exclude: str | None = None
    ) -> DeadLetter | None:
        """The earliest unresolved entry of ``key`` on ``topic`` that an event at
        ``offset`` must wait behind (None: nothing to wait for)."""
        ids = self.by_key.get((topic, key))
        if not ids:
            return None
        found = [self.entries[i] for i in ids if i != exclude and self.entries[i].offset < offset]
        return min(found, key=lambda e: e.offset) if found else None

    def listing(self, *, include_resolved: bool = False) -> list[tuple[DeadLetter, State]]:
        """Entries in the order they were dead-lettered, with their state."""
        rows = [(entry, self.states.get(entry.entry, "dead")) for entry in self.entries.values()]
        if not include_resolved:
            rows = [(e, s) for e, s in rows if s in UNRESOLVED]
        rows.sort(key=lambda row: (row[0].dead_at, row[0].dlq_partition, row[0].dlq_offset))
        return rows

    def depth(self) -> int:
        """How many entries wait for an operator (state ``dead``)."""
        return sum(1 for s in self.states.values() if s == "dead")


class DeadLetterQueue:
    """The worker's side of a group's dead letters: writes entries and marks, and
    keeps the group's :class:`DeadLetterLog` current enough to park by key."""

    def __init__(self, transport: Transport, group: str, *, sequenced: bool) -> None:
        self.transport = transport
        self.group = group
        self.sequenced = sequenced
        self.log = DeadLetterLog(transport, group)
        self.topic = dlq_topic(group)
        self.retry_topic = retry_topic(group)

    async def start(self) -> None:
        await self.transport.create_topic(self.topic)
        await self.transport.create_topic(self.retry_topic)
        await self.log.refresh()

    async def write(
        self,
        record: Record,
        error: BaseException,
        *,
        reason: Reason,
        stopping: asyncio.Event,
        delivery: Delivery | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
        correlationid: str | None = None,
        parked_behind: str | None = None,
        replay_of: str | None = None,
    ) -> DeadLetter:
        """Append one entry for ``record`` (the original), retrying while the log is
        down; once this returns, the event may be committed."""
        now = time.time()
        cause = error.error if isinstance(error, RetriesExhausted) else error
        attempts = 1
        first = last = now
        handler = None
        if delivery is not None:
            attempts = delivery.attempt
            first = delivery.first_failure or now
            last = delivery.last_failure or now
            handler = delivery.subscriber.name
            event_id, event_type = delivery.event.id, delivery.event.type
            correlationid = delivery.event.correlationid or delivery.event.id
            replay_of = delivery.replay_of
        known = self.log.waiting_for(record.topic, record.partition, record.offset, handler)
        # (The entry being replayed is not a duplicate of its own failure: its state may
        # still read "dead" here, as the replay marks entries after sending them.)
        if known is not None and known.reason == reason and known.entry != replay_of:
            log.warning(
                "group %s: %s[%d]@%d is already dead-lettered as %s (a previous run stopped "
                "before committing); not written again",
                self.group, record.topic, record.partition, record.offset, known.entry,
            )  # fmt: skip
            return known
        trace = None
        if reason != "parked":
            trace = "".join(traceback.format_exception(cause))[-TRACEBACK_LIMIT:]
        entry = DeadLetter(
            entry=new_id(),
            group=self.group,
            reason=reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key,
            value=record.value,
            error_type=_type_name(cause),
            error_message=str(cause),
            traceback=trace,
            attempts=attempts,
            first_failure=first,
            last_failure=last,
            dead_at=now,
            event_id=event_id,
            type=event_type,
            correlationid=correlationid,
            handler=handler,
            parked_behind=parked_behind,
            replay_of=replay_of,
        )
        placed = await self._append([(record.key, entry.encode())], stopping)
        entry = replace(entry, dlq_partition=placed[0][0], dlq_offset=placed[0][1])
        self.log.add(entry)
        log.error(
            "group %s: %s[%d]@%d (%s %s) dead-lettered (%s) as %s: %s",
            self.group, record.topic, record.partition, record.offset, event_type, event_id,
            reason, entry.entry, entry.error_message,
        )  # fmt: skip
        return entry

    async def mark(self, state: State, entries: Sequence[str], stopping: asyncio.Event) -> None:
        if not entries:
            return
        await self._append([(None, _mark(state, entries))], stopping)
        for entry_id in entries:
            self.log.set_state(entry_id, state)

    async def _append(
        self, records: list[tuple[str | None, bytes]], stopping: asyncio.Event
    ) -> list[tuple[int, int]]:
        while True:
            try:
                return await self.transport.append(self.topic, records)
            except TransportError:
                log.exception(
                    "group %s: writing to %s failed; trying again in %.0fs",
                    self.group, self.topic, WRITE_RETRY,
                )  # fmt: skip
                try:
                    await asyncio.wait_for(stopping.wait(), WRITE_RETRY)
                except TimeoutError:
                    continue
                raise asyncio.CancelledError from None


# -- operating: list, replay, purge (the library behind ``tidings dlq``) ----------


@dataclass(frozen=True)
class Filter:
    """Which entries an operator means. Empty fields match everything."""

    types: frozenset[str] = frozenset()
    error_types: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()  # entry ids or event ids
    since: float | None = None  # dead_at, Unix seconds
    until: float | None = None

    def __call__(self, entry: DeadLetter) -> bool:
        if self.types and entry.type not in self.types:
            return False
        if self.error_types and not (
            entry.error_type in self.error_types
            or entry.error_type.rsplit(".", 1)[-1] in self.error_types
        ):
            return False
        if self.ids and entry.entry not in self.ids and entry.event_id not in self.ids:
            return False
        if self.since is not None and entry.dead_at < self.since:
            return False
        return not (self.until is not None and entry.dead_at > self.until)


async def open_log(transport: Transport, group: str) -> DeadLetterLog:
    """A group's dead letters, read in full; TopicNotFound if it never had a worker."""
    names = {info.name for info in await transport.topics()}
    if dlq_topic(group) not in names:
        groups = sorted(n[: -len(".dlq")] for n in names if n.endswith(".dlq"))
        raise TopicNotFound(
            f"group {group!r} has no dead-letter topic in {transport.url} (a worker creates "
            f"it when it first runs the group); groups with one: {', '.join(groups) or 'none'}"
        )
    dead = DeadLetterLog(transport, group)
    await dead.refresh()
    return dead


async def replay(
    transport: Transport,
    group: str,
    where: Filter,
    *,
    batch: int = 500,
    progress: Any = None,
) -> int:
    """Send the matching ``dead`` entries to ``group``'s retry topic, in order, then
    mark them replayed; return how many. Entries already replayed, resolved or purged
    are left alone, so running it twice replays each entry once. If this is
    interrupted between sending and marking, a second run sends those again; the worker
    skips an entry it has already resolved, and an inbox removes what remains."""
    dead = await open_log(transport, group)
    chosen = [e for e, s in dead.listing() if s == "dead" and where(e)]
    # One key's entries in original order: a sequenced group replays its parked
    # events behind the one they waited for.
    chosen.sort(key=lambda e: (e.topic, e.partition, e.offset, e.dead_at))
    stop = asyncio.Event()
    queue = DeadLetterQueue(transport, group, sequenced=False)
    await transport.create_topic(queue.retry_topic)
    done = 0
    for start in range(0, len(chosen), batch):
        part = chosen[start : start + batch]
        await transport.append(queue.retry_topic, [(e.key, e.encode()) for e in part])
        await queue.mark("replayed", [e.entry for e in part], stop)
        done += len(part)
        if progress is not None:
            progress(done, len(chosen))
    return done


async def purge(transport: Transport, group: str, where: Filter) -> int:
    """Mark the matching unresolved entries purged; return how many."""
    dead = await open_log(transport, group)
    chosen = [e.entry for e, _ in dead.listing() if where(e)]
    queue = DeadLetterQueue(transport, group, sequenced=False)
    stop = asyncio.Event()
    for start in range(0, len(chosen), 1000):
        await queue.mark("purged", chosen[start : start + 1000], stop)
    return len(chosen)


async def depths(transport: Transport, groups: Iterable[str]) -> dict[str, int]:
    """Per group, the entries waiting in its dead-letter topic (0 if it has none)."""
    names = {info.name for info in await transport.topics()}
    result: dict[str, int] = {}
    for group in groups:
        if dlq_topic(group) not in names:
            result[group] = 0
            continue
        dead = DeadLetterLog(transport, group)
        await dead.refresh()
        result[group] = dead.depth()
    return result


class Parked(TidingsError):
    """Why an event of a sequenced group waits in the dead letters: an earlier event
    of its key is there."""

    def __init__(self, blocker: DeadLetter) -> None:
        self.blocker = blocker
        super().__init__(
            f"parked behind dead letter {blocker.entry} ({blocker.type} {blocker.event_id} at "
            f"{blocker.topic}[{blocker.partition}]@{blocker.offset}) of key {blocker.key!r}"
        )
