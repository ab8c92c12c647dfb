"""A group's dead letters: the fold of its ``.dlq`` topic, read incrementally, and the
writer of its entries and marks."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

import orjson

from tidings.dead_letters.entry import (
    DLQ_PARTITIONS,
    MARKS,
    UNRESOLVED,
    DeadLetter,
    Reason,
    State,
    after,
    dlq_topic,
    mark_record,
    new_entry,
    retry_topic,
    value_limit,
)
from tidings.errors import ConfigError, DecodeError, RecordRejected, TransportError
from tidings.logs import fields
from tidings.transport import FOREVER, Record, Transport

__all__ = ["DeadLetterLog"]

log = logging.getLogger("tidings.dead_letters")

WRITE_RETRY = 1.0  # seconds between attempts to write a dead letter while the log is down
READ_BATCH = 256  # records read at a time per partition while refreshing
ORDER = ("dead_at", "dlq_partition", "dlq_offset")  # a listing's order: as dead-lettered
_order_key = attrgetter(*ORDER)


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

    :meth:`write` and :meth:`mark` append entries and marks and apply them at once. An
    entry keeps at most ``max_value_bytes`` of the original (default
    :func:`~tidings.dead_letters.value_limit`: all of it where the log takes records of
    any size), so that a dead letter can always be written; a cut entry cannot be
    replayed.
    """

    transport: Transport
    group: str
    resolved: bool = field(default=True, kw_only=True)
    values: bool = field(default=True, kw_only=True)
    max_value_bytes: int | None = field(default=None, kw_only=True)
    # Bumped by every entry and mark applied: a caller keeping a listing of the log
    # (the dashboard's pages) knows when it is stale.
    changes: int = field(default=0, kw_only=True)
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
    _waiting: tuple[int, Counter[tuple[str, int]]] | None = None
    _ordered: list[DeadLetter] | None = None  # the entries in ORDER, once asked for

    def __post_init__(self) -> None:
        given = self.max_value_bytes
        if given is None:
            self.max_value_bytes = value_limit(self.transport)
        elif isinstance(given, bool) or not isinstance(given, int) or given < 0:
            raise ConfigError(f"DeadLetterLog(max_value_bytes={given!r}) must be an int >= 0")

    @property
    def topic(self) -> str:
        return dlq_topic(self.group)

    @property
    def retry_topic(self) -> str:
        return retry_topic(self.group)

    async def create_topics(self, retry_partitions: int = 1) -> None:
        """Create the group's two topics if missing. Dead letters and replays wait for
        an operator: never expired, on any transport.

        ``<group>.dlq`` gets :data:`~tidings.dead_letters.entry.DLQ_PARTITIONS` (one),
        ``<group>.retry`` ``retry_partitions``: the largest partition count among the
        topics the group reads, so that a replay is shared among the group's members as
        its events were. A topic that exists keeps its partition count (a group that ran
        before keeps its 8 and 8); replays keep a key's order on any count
        (:func:`~tidings.dead_letters.entry.replay_key`).
        """
        create = self.transport.create_topic
        await create(self.topic, DLQ_PARTITIONS, retention_ms=FOREVER, retention_bytes=FOREVER)
        await create(
            self.retry_topic, retry_partitions, retention_ms=FOREVER, retention_bytes=FOREVER
        )

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
        self.changes += 1
        state = self.states.get(entry_id)
        if state is None:
            early = self._early.pop(entry_id, None)
            before = self._early_before.pop(entry_id, None)
            state = early or before or "dead"
            if not self.resolved and state not in UNRESOLVED:
                return
        self._place(entry, replacing=entry_id in self.entries)
        self.entries[entry_id] = entry
        self.states[entry_id] = state
        self.by_position[(entry.topic, entry.partition, entry.offset, entry.handler)] = entry_id
        self._index(entry_id)

    def set_state(self, entry_id: str, state: State) -> None:
        """Apply a mark to one entry (final states stay final)."""
        self.changes += 1
        current = self.states.get(entry_id)
        if current is None:
            early = self._early.get(entry_id) or self._early_before.get(entry_id)
            self._early[entry_id] = after(early, state)
            return
        state = after(current, state)
        if not self.resolved and state not in UNRESOLVED:
            self._forget(entry_id, state)
            return
        self.states[entry_id] = state
        self._index(entry_id)

    def _forget(self, entry_id: str, state: State) -> None:
        entry = self.entries.pop(entry_id)
        self._ordered = None
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

    def listing(
        self,
        where: Callable[[DeadLetter], bool] | None = None,
        *,
        include_resolved: bool = False,
    ) -> list[tuple[DeadLetter, State]]:
        """The entries :meth:`matching` gives, with their state."""
        return self.with_states(self.matching(where, include_resolved=include_resolved))

    def matching(
        self,
        where: Callable[[DeadLetter], bool] | None = None,
        *,
        include_resolved: bool = False,
    ) -> list[DeadLetter]:
        """The entries ``where`` matches (all without it), unresolved ones only unless
        ``include_resolved``, in the order they were dead-lettered (:meth:`ordered`)."""
        states = self.states
        return [
            entry
            for entry in self.ordered()
            if (include_resolved or states.get(entry.entry, "dead") in UNRESOLVED)
            and (where is None or where(entry))
        ]

    def with_states(self, entries: Iterable[DeadLetter]) -> list[tuple[DeadLetter, State]]:
        """``entries`` (of this log), each with its state."""
        return [(entry, self.states.get(entry.entry, "dead")) for entry in entries]

    def ordered(self) -> list[DeadLetter]:
        """Every entry held, in the order they were dead-lettered (by ``dead_at``, then
        their place in the topic). Sorted when first asked for, then kept: an entry
        read later goes at the end where it belongs there (entries are read in the
        topic's order, which is nearly that of ``dead_at``), and the next call sorts
        again only after one went elsewhere or was forgotten. The list is the log's:
        not to be changed."""
        if self._ordered is None:
            order = list(self.entries.values())  # as read: nearly in order already
            # Stable sorts by each key from the last, not one sort by a tuple: 50,000
            # tuples alive at once made the collector pass over every object the
            # process holds (300 ms of the dashboard's first list page, issue 23).
            for name in reversed(ORDER):
                order.sort(key=attrgetter(name))
            self._ordered = order
        return self._ordered

    def _place(self, entry: DeadLetter, *, replacing: bool) -> None:
        """Keep :meth:`ordered`'s list, if there is one, with ``entry`` added."""
        order = self._ordered
        if order is None:
            return
        if not replacing and (not order or _order_key(order[-1]) <= _order_key(entry)):
            order.append(entry)
        else:
            self._ordered = None  # sorted again when next asked for

    def waiting(self) -> Counter[tuple[str, int]]:
        """The entries waiting for an operator (state ``dead``) by the topic and
        partition their event was read from; counted again only after a change."""
        if self._waiting is None or self._waiting[0] != self.changes:
            counts: Counter[tuple[str, int]] = Counter()
            for entry_id, entry in self.entries.items():
                if self.states.get(entry_id) == "dead":
                    counts[(entry.topic, entry.partition)] += 1
            self._waiting = (self.changes, counts)
        return Counter(self._waiting[1])

    def depth(self) -> int:
        """How many entries wait for an operator (state ``dead``)."""
        return sum(1 for s in self.states.values() if s == "dead")

    # -- writing ---------------------------------------------------------------------

    def entry(
        self, record: Record, error: BaseException, *, reason: Reason, **fields: Any
    ) -> DeadLetter:
        """A new entry of this group for ``record``, keeping what this log allows of
        the original; ``fields`` as :func:`~tidings.dead_letters.new_entry` takes them."""
        return new_entry(
            self.group, record, error, reason=reason, max_value_bytes=self.max_value_bytes,
            **fields,
        )  # fmt: skip

    async def write(self, entry: DeadLetter, stopping: asyncio.Event) -> DeadLetter:
        """Append ``entry`` (see :func:`~tidings.dead_letters.new_entry`), retrying
        while the log is down; once this returns, the event may be committed. Returns
        the entry as placed, or the one already waiting for the same event and handler.

        If the log refuses the entry (:class:`~tidings.errors.RecordRejected`), it is
        written without the original and with a shorter error; RecordRejected is raised
        only if even that is refused.
        """
        known = self.waiting_for(entry.topic, entry.partition, entry.offset, entry.handler)
        # (The entry being replayed is not a duplicate of its own failure: its state may
        # still read "dead" here, as the replay marks entries after sending them.)
        if known is not None and known.reason == entry.reason and known.entry != entry.replay_of:
            log.warning(
                "group %s: %s[%d]@%d is already dead-lettered as %s (a previous run stopped "
                "before committing); not written again",
                self.group, entry.topic, entry.partition, entry.offset, known.entry,
                extra=_fields(entry),
            )  # fmt: skip
            return known
        try:
            placed = await self._append([(entry.key, entry.encode())], stopping)
        except RecordRejected as exc:
            log.warning(
                "group %s: %s refused the dead letter of %s[%d]@%d (%s); writing it "
                "without the original (%s bytes, sha256 %s)",
                self.group, self.topic, entry.topic, entry.partition, entry.offset,
                exc, entry.value_size, entry.value_sha256, extra=_fields(entry),
            )  # fmt: skip
            entry = entry.without_original()
            try:
                placed = await self._append([(entry.key, entry.encode())], stopping)
            except RecordRejected as again:
                raise RecordRejected(
                    f"group {self.group}: {self.topic} refuses even a dead letter without "
                    f"the original for {entry.topic}[{entry.partition}]@{entry.offset} "
                    f"(key of {len(entry.key or '')} characters): {again}"
                ) from again
        entry = replace(entry, dlq_partition=placed[0][0], dlq_offset=placed[0][1])
        self.add(entry)
        log.error(
            "group %s: %s[%d]@%d (%s %s) dead-lettered (%s) as %s: %s",
            self.group, entry.topic, entry.partition, entry.offset, entry.type,
            entry.event_id, entry.reason, entry.entry, entry.error_message,
            extra=_fields(entry),
        )  # fmt: skip
        return entry

    async def mark(self, state: State, entries: Sequence[str], stopping: asyncio.Event) -> None:
        """Append one mark naming ``entries`` (retrying while the log is down), and
        apply it."""
        if not entries:
            return
        await self._append([(None, mark_record(state, entries))], stopping)
        for entry_id in entries:
            self.set_state(entry_id, state)

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


def _fields(entry: DeadLetter) -> dict[str, Any]:
    """The log fields of a dead letter's event (tidings.logs): inside a handler call
    they are the call's anyway; the worker's intake writes poison outside one."""
    return fields(
        group=entry.group, subscriber=entry.handler, topic=entry.topic,
        partition=entry.partition, offset=entry.offset, event_id=entry.event_id,
        correlation_id=entry.correlationid, type=entry.type, dead_letter=entry.entry,
    )  # fmt: skip
