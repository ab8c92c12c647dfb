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
import hashlib
import logging
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson

from tidings.envelope import new_id
from tidings.errors import (
    ConfigError,
    DecodeError,
    RecordRejected,
    RetriesExhausted,
    TopicNotFound,
    TransportError,
)
from tidings.transport import FOREVER, Record, Transport

if TYPE_CHECKING:
    from tidings.middleware.base import Delivery

__all__ = [
    "DeadLetter",
    "DeadLetterLog",
    "DeadLetterQueue",
    "Filter",
    "Reason",
    "State",
    "dlq_topic",
    "retry_topic",
]

log = logging.getLogger("tidings.dead_letters")

Reason = Literal["failed", "poison", "parked"]
State = Literal["dead", "replayed", "resolved", "purged"]
UNRESOLVED: frozenset[str] = frozenset({"dead", "replayed"})
MARKS: frozenset[str] = frozenset({"replayed", "resolved", "purged"})
TRACEBACK_LIMIT = 16_384  # characters kept of a traceback, and of an error message
# Bytes of the original an entry keeps; None: as much as the log takes (value_limit).
VALUE_LIMIT: int | None = None
ENTRY_ROOM = 64 * 1024  # an entry's bytes for all but the original: error, traceback, fields
REFUSED_TEXT_LIMIT = 4_096  # characters of traceback and message kept when an entry is refused
WRITE_RETRY = 1.0  # seconds between attempts to write a dead letter while the log is down
READ_BATCH = 256  # records read at a time per partition while refreshing


def dlq_topic(group: str) -> str:
    """The topic holding ``group``'s dead letters."""
    return f"{group}.dlq"


def retry_topic(group: str) -> str:
    """The topic only ``group`` reads, where its dead letters are replayed."""
    return f"{group}.retry"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry. ``value`` is the original record, byte for byte, unless
    ``truncated``: then it is only the original's first bytes (none if the log refused
    even those), ``value_size`` and ``value_sha256`` identify the original, and the
    entry cannot be replayed. Entries written before these fields read as not truncated,
    with ``value_size`` and ``value_sha256`` None.

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
    truncated: bool = False
    value_size: int | None = None  # the original's size in bytes
    value_sha256: str | None = None  # the original's SHA-256, hex
    dlq_partition: int = -1
    dlq_offset: int = -1

    @property
    def replayable(self) -> bool:
        """Whether a replay can send the original (it was not truncated)."""
        return not self.truncated

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
            "truncated": self.truncated,
            "value_size": self.value_size,
            "value_sha256": self.value_sha256,
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
                truncated=bool(doc.get("truncated", False)),
                value_size=None if doc.get("value_size") is None else int(doc["value_size"]),
                value_sha256=doc.get("value_sha256"),
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


def _after(current: State | None, state: State) -> State:
    """The state a mark leaves: final states stay final (a late ``replayed`` mark must
    not revive a resolved entry)."""
    if current is not None and current not in UNRESOLVED and state in UNRESOLVED:
        return current
    return state


def _merge_order(record: Record) -> tuple[int, bool, int]:
    return (record.timestamp, record.value.startswith(b'{"kind":"mark"'), record.partition)


@dataclass
class DeadLetterLog:
    """A group's dead letters as read from its ``.dlq`` topic, refreshed incrementally.

    ``refresh()`` reads only what was appended since the last call, so a worker can
    call it whenever it needs to be sure (a partition changed hands, a replayed entry
    arrived) without re-reading the queue.

    ``resolved=False`` forgets resolved and purged entries, so memory follows the
    unresolved entries, not the topic; ``values=False`` keeps entries without their
    ``value`` and ``traceback``. A worker's log does both (it needs the unresolved
    entries to park by key and to not write an entry twice).
    """

    transport: Transport
    group: str
    resolved: bool = field(default=True, kw_only=True)
    values: bool = field(default=True, kw_only=True)
    entries: dict[str, DeadLetter] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)  # of the entries, one each
    # (original topic, key) -> unresolved entry ids of that key, for sequenced groups
    by_key: dict[tuple[str, str | None], set[str]] = field(default_factory=dict)
    # (topic, partition, offset, handler) -> the latest entry for that event and handler
    by_position: dict[tuple[str, int, int, str | None], str] = field(default_factory=dict)
    # Marks read before their entries (another partition, a writer's clock behind): kept
    # until a whole refresh started after them has run, which reads every entry written
    # before them; what is still here then marked an entry already forgotten.
    _early: dict[str, State] = field(default_factory=dict)
    _early_before: dict[str, State] = field(default_factory=dict)
    _positions: dict[int, int] = field(default_factory=dict)
    _partitions: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def topic(self) -> str:
        return dlq_topic(self.group)

    async def refresh(self) -> None:
        """Read and apply what was appended since the last refresh.

        A failed read raises, and leaves the log as of the records applied until then
        (each partition's position follows exactly what was applied): calling it again
        goes on from there.
        """
        async with self._lock:
            if not self._partitions:
                for info in await self.transport.topics():
                    if info.name == self.topic:
                        for p in info.partitions:
                            self._positions.setdefault(p.partition, p.start)
                        self._partitions = len(info.partitions)
                        break
            # The partitions are merged by append time (entries first within a
            # millisecond), so that a mark mostly comes after its entry and memory holds
            # what was unresolved at that time, not all that was read.
            heads: dict[int, deque[Record]] = {}
            reading = set(range(self._partitions))
            applied = 0
            while True:
                for partition in sorted(reading - heads.keys()):
                    records = await self.transport.read(
                        self.topic, partition, self._positions.get(partition, 0), READ_BATCH
                    )
                    if records:
                        heads[partition] = deque(records)
                    else:
                        reading.discard(partition)  # read to its end
                if not heads:
                    break
                while True:
                    partition = min(heads, key=lambda p: _merge_order(heads[p][0]))
                    queue = heads[partition]
                    record = queue.popleft()
                    self._apply(record)
                    applied += 1
                    self._positions[partition] = record.offset + 1
                    if not queue:
                        del heads[partition]
                        break
            self._early_before, self._early = self._early, {}
            if applied > 2 * len(self.entries) + 1000:
                self._compact()

    def _compact(self) -> None:
        """Give back the room of what was forgotten (a dict never shrinks by itself)."""
        self.entries = dict(self.entries)
        self.states = dict(self.states)
        self.by_position = dict(self.by_position)
        self.by_key = dict(self.by_key)
        self._early_before = dict(self._early_before)

    def _apply(self, record: Record) -> None:
        try:
            doc = orjson.loads(record.value)
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if kind == "entry":
                if not self.values:
                    doc["value"], doc["traceback"] = "", None  # not decoded to be dropped
                entry = DeadLetter.from_json(doc, partition=record.partition, offset=record.offset)
                self.add(entry)
            elif kind == "mark":
                state = doc["state"]
                if state not in MARKS:
                    raise DecodeError(f"a mark with the state {state!r}")
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
        """Apply an entry (as read, or as just written by this process)."""
        if not self.values and (entry.value or entry.traceback):
            entry = replace(entry, value=b"", traceback=None)
        entry_id = entry.entry
        state = self.states.get(entry_id)
        if state is None:
            early = self._early.pop(entry_id, None)
            before = self._early_before.pop(entry_id, None)
            state = early or before or "dead"
            if not self.resolved and state not in UNRESOLVED:
                return
        self.entries[entry_id] = entry
        self.states[entry_id] = state
        self.by_position[(entry.topic, entry.partition, entry.offset, entry.handler)] = entry_id
        self._index(entry_id)

    def set_state(self, entry_id: str, state: State) -> None:
        """Apply a mark to one entry (final states stay final)."""
        current = self.states.get(entry_id)
        if current is None:
            early = self._early.get(entry_id) or self._early_before.get(entry_id)
            self._early[entry_id] = _after(early, state)
            return
        state = _after(current, state)
        if not self.resolved and state not in UNRESOLVED:
            self._forget(entry_id, state)
            return
        self.states[entry_id] = state
        self._index(entry_id)

    def _forget(self, entry_id: str, state: State) -> None:
        entry = self.entries.pop(entry_id)
        del self.states[entry_id]
        self._index(entry_id, entry)
        position = (entry.topic, entry.partition, entry.offset, entry.handler)
        if self.by_position.get(position) == entry_id:
            del self.by_position[position]
        if self._positions.get(entry.dlq_partition, 0) <= entry.dlq_offset:
            # Written by this process and not read back yet: forget it then too.
            self._early[entry_id] = state

    def _index(self, entry_id: str, gone: DeadLetter | None = None) -> None:
        entry = gone or self.entries.get(entry_id)
        if entry is None:
            return
        slot = (entry.topic, entry.key)
        if gone is None and self.states.get(entry_id, "dead") in UNRESOLVED:
            self.by_key.setdefault(slot, set()).add(entry_id)
        else:
            ids = self.by_key.get(slot)
            if ids is not None:
                ids.discard(entry_id)
                if not ids:
                    del self.by_key[slot]

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

    def state(self, entry_id: str) -> State | None:
        """The entry's state; None if this log does not hold it (see :meth:`unresolved`)."""
        return self.states.get(entry_id)

    def unresolved(self, entry_id: str) -> bool:
        """Whether the entry waits (``dead`` or ``replayed``). After a refresh that
        started once the entry was written, False means resolved or purged (or an id
        that was never written), in either mode."""
        return self.states.get(entry_id) in UNRESOLVED

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


def value_limit(transport: Transport) -> int | None:
    """How much of an original a dead letter keeps on ``transport``: everything where
    the log has no record limit of its own (SQLite), else what fits beside the rest of
    the entry once base64-encoded (about 700 KB on Kafka's and NATS's defaults)."""
    if VALUE_LIMIT is not None:
        return VALUE_LIMIT
    most = transport.capabilities.max_record_bytes
    return None if most is None else max(0, (most - ENTRY_ROOM) * 3 // 4)


class DeadLetterQueue:
    """The worker's side of a group's dead letters: writes entries and marks, and
    keeps the group's :class:`DeadLetterLog` current enough to park by key (a log that
    forgets resolved entries and keeps no values).

    An entry keeps at most ``max_value_bytes`` of the original (default
    :func:`value_limit`: all of it where the log takes records of any size), so that a
    dead letter can always be written; a cut entry cannot be replayed.
    """

    def __init__(
        self,
        transport: Transport,
        group: str,
        *,
        sequenced: bool,
        max_value_bytes: int | None = None,
    ) -> None:
        limit = value_limit(transport) if max_value_bytes is None else max_value_bytes
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ConfigError(
                f"DeadLetterQueue(max_value_bytes={max_value_bytes!r}) must be an int >= 0"
            )
        self.transport = transport
        self.group = group
        self.sequenced = sequenced
        self.max_value_bytes = limit
        self.log = DeadLetterLog(transport, group, resolved=False, values=False)
        self.topic = dlq_topic(group)
        self.retry_topic = retry_topic(group)

    async def start(self) -> None:
        # Dead letters and replays wait for an operator: never expired, on any transport.
        for topic in (self.topic, self.retry_topic):
            await self.transport.create_topic(topic, retention_ms=FOREVER, retention_bytes=FOREVER)
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
        down; once this returns, the event may be committed.

        The original is cut to ``max_value_bytes``; if the log still refuses the entry
        (:class:`~tidings.errors.RecordRejected`), it is written without the original
        and with a shorter error. RecordRejected is raised only if even that is refused.
        """
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
        value = record.value
        entry = DeadLetter(
            entry=new_id(),
            group=self.group,
            reason=reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key,
            value=value[: self.max_value_bytes],
            error_type=_type_name(cause),
            error_message=_clip(str(cause), TRACEBACK_LIMIT),
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
            truncated=self.max_value_bytes is not None and len(value) > self.max_value_bytes,
            value_size=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
        )
        try:
            placed = await self._append([(record.key, entry.encode())], stopping)
        except RecordRejected as exc:
            log.warning(
                "group %s: %s refused the dead letter of %s[%d]@%d (%s); writing it "
                "without the original (%d bytes, sha256 %s)",
                self.group, self.topic, record.topic, record.partition, record.offset,
                exc, len(value), entry.value_sha256,
            )  # fmt: skip
            entry = replace(
                entry,
                value=b"",
                truncated=bool(value),
                error_message=_clip(entry.error_message, REFUSED_TEXT_LIMIT),
                traceback=None if trace is None else trace[-REFUSED_TEXT_LIMIT:],
            )
            try:
                placed = await self._append([(record.key, entry.encode())], stopping)
            except RecordRejected as again:
                raise RecordRejected(
                    f"group {self.group}: {self.topic} refuses even a dead letter without "
                    f"the original for {record.topic}[{record.partition}]@{record.offset} "
                    f"(key of {len(record.key or '')} characters): {again}"
                ) from again
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
            except RecordRejected:
                raise  # it would be refused again, for ever
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


async def open_log(
    transport: Transport, group: str, *, resolved: bool = True, values: bool = True
) -> DeadLetterLog:
    """A group's dead letters, read in full (``resolved`` and ``values`` as
    :class:`DeadLetterLog` takes them); TopicNotFound if it never had a worker."""
    names = {info.name for info in await transport.topics()}
    if dlq_topic(group) not in names:
        groups = sorted(n[: -len(".dlq")] for n in names if n.endswith(".dlq"))
        raise TopicNotFound(
            f"group {group!r} has no dead-letter topic in {transport.url} (a worker creates "
            f"it when it first runs the group); groups with one: {', '.join(groups) or 'none'}"
        )
    dead = DeadLetterLog(transport, group, resolved=resolved, values=values)
    await dead.refresh()
    return dead


def replay_plan(dead: DeadLetterLog, where: Filter) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """The matching ``dead`` entries a replay sends, in the order it sends them, and the
    ones it skips: truncated entries, whose original was not kept in full."""
    chosen = [e for e, s in dead.listing() if s == "dead" and where(e)]
    # One key's entries in original order: a sequenced group replays its parked
    # events behind the one they waited for.
    chosen.sort(key=lambda e: (e.topic, e.partition, e.offset, e.dead_at))
    return [e for e in chosen if e.replayable], [e for e in chosen if not e.replayable]


async def replay(
    transport: Transport,
    group: str,
    where: Filter,
    *,
    batch: int = 500,
    progress: Any = None,
) -> int:
    """Send what :func:`replay_plan` chooses to ``group``'s retry topic, in order, then
    mark it replayed; return how many. Entries already replayed, resolved or purged
    are left alone, so running it twice replays each entry once. If this is
    interrupted between sending and marking, a second run sends those again; the worker
    skips an entry it has already resolved, and an inbox removes what remains."""
    dead = await open_log(transport, group, resolved=False)
    chosen, cut = replay_plan(dead, where)
    if cut:
        log.warning(
            "group %s: %d truncated dead letter(s) not replayed (their original was not "
            "kept in full), e.g. %s",
            group, len(cut), cut[0].entry,
        )  # fmt: skip
    stop = asyncio.Event()
    queue = DeadLetterQueue(transport, group, sequenced=False)
    await transport.create_topic(queue.retry_topic, retention_ms=FOREVER, retention_bytes=FOREVER)
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
    dead = await open_log(transport, group, resolved=False, values=False)
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
        dead = DeadLetterLog(transport, group, resolved=False, values=False)
        await dead.refresh()
        result[group] = dead.depth()
    return result
