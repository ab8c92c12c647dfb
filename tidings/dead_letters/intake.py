"""Where a group's fetched records enter the worker, on the dead letters' side.

The worker hands every record it fetched to its group's :class:`Intake`, which

- unwraps a replayed entry (read from the group's ``.retry`` topic) into the original
  record, skipping one already resolved (a replay sent twice) or truncated;
- dead-letters a record that cannot be decoded (poison: never retried), or only
  reports it when the worker runs without the dead-letter middleware;
- in a sequenced group, parks an event behind the earliest unresolved dead letter of
  its key;
- dispatches the rest to the group's subscribers (the worker's chains, where the
  :class:`~tidings.middleware.DeadLetters` middleware writes what a handler gives up
  on), and marks a replayed entry resolved once that returned.

So everything about dead letters lives in this package; the worker only fetches,
dispatches and commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Protocol

from tidings.dead_letters.entry import DeadLetter
from tidings.dead_letters.log import DeadLetterLog
from tidings.envelope import Event
from tidings.errors import DecodeError, EventError, Parked, TransportError
from tidings.logs import at
from tidings.stats import Stats
from tidings.transport import Record, StartFrom

__all__ = ["Dispatch", "Handled", "Intake", "Runs", "report_poison"]

log = logging.getLogger("tidings.worker")

# What the worker does with a decoded event: hand it to the subscribers that want it
# (for a replay, the handler that failed); the replayed entry, if any, is the third.
Dispatch = Callable[[Record, Event, DeadLetter | None], Awaitable[None]]

# What a run calls with the records it handled (the head of the lane's queue, in order).
Handled = Callable[[list[Record]], None]

RETRY_PAUSE = 1.0  # seconds before reading the dead letters is tried again
RUN_MAX = 128  # records decoded ahead for a run, at most


class Runs(Protocol):
    """Where plain records may go several at once (the worker's dispatcher, for plain
    def handlers: see :meth:`Intake.take_run`)."""

    @property
    def always(self) -> Container[tuple[str, str]]:
        """The (topic, event type)s whose events are all batchable (not asked each)."""
        ...

    def batchable(self, record: Record, event: Event) -> bool:
        """Whether ``event`` may be handled in a run."""
        ...

    async def dispatch_run(self, run: Sequence[tuple[Record, Event]], handled: Handled) -> int:
        """Handle a prefix of ``run`` in order, at least its first event, calling
        ``handled`` with those records once they may be committed (also when the run
        ends by an exception); return how many it handled."""
        ...


def report_poison(group: str, record: Record, reason: Exception, stats: Stats) -> None:
    """Log an undecodable event with its position, and count it (a worker without
    the dead-letter middleware passes it)."""
    stats.undecodable += 1
    log.error(
        "group %s: %s[%d]@%d cannot be decoded, skipped: %s",
        group, record.topic, record.partition, record.offset, reason,
        extra=at(group, record),
    )  # fmt: skip


class Intake:
    """A group's records on their way in (see the module's docstring).

    ``writes``: whether this worker dead-letters (its middleware has
    :class:`~tidings.middleware.DeadLetters`); without it, poison is reported and
    passed and nothing is parked, but replays are still read and handled.
    """

    def __init__(
        self,
        log: DeadLetterLog,
        *,
        sequenced: bool,
        writes: bool,
        decode: Callable[[Record], Event],
        dispatch: Dispatch,
        stats: Stats,
        stopping: asyncio.Event,
        runs: Runs | None = None,
    ) -> None:
        self.transport = log.transport
        self.group = log.group
        self.log = log  # the worker's view: resolved=False, values=False
        self.retry_topic = log.retry_topic  # compared with every record's topic
        self.writes = writes
        self.parks = sequenced and writes
        self.decode = decode
        self.dispatch = dispatch
        self.stats = stats
        self.stopping = stopping
        self.runs = runs
        # Records decoded ahead for the next run. Those after where a run was cut (its
        # time was up: slow handlers) are decoded again for the next: after a cut run,
        # twice what it handled; after a whole one, twice as many as before.
        self.run_size = RUN_MAX

    async def start(self, start_from: StartFrom, topics: Sequence[str] = ()) -> None:
        """Create the group's ``topics`` if missing (as its consumer would) and its
        dead-letter topics, sized from them, and read them. A group that starts at
        ``latest`` must still read replays sent before its first run: it gets committed
        offsets at the start of its retry topic."""
        counts = [len((await self.transport.create_topic(t)).partitions) for t in topics]
        await self.log.create_topics(max(counts, default=1))
        await self.log.refresh()
        if start_from != "latest":
            return
        topic = self.retry_topic
        for info in await self.transport.groups():
            if info.group == self.group and any(p.topic == topic for p in info.partitions):
                return
        for topic_info in await self.transport.topics():
            if topic_info.name == topic:
                offsets = {p.partition: p.start for p in topic_info.partitions}
                await self.transport.set_offsets(self.group, topic, offsets, force=True)

    async def catch_up(self) -> bool:
        """Read the group's dead letters up to now (partitions changed hands: learn what
        their previous owner dead-lettered and parked), trying again while the log fails
        (on NATS, a stream without a leader for a moment); False if stopped first."""
        while True:
            try:
                await self.log.refresh()
                return True
            except TransportError:
                log.exception(
                    "group %s: reading the dead letters failed; trying again in %.0fs",
                    self.group, RETRY_PAUSE, extra=at(self.group),
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), RETRY_PAUSE)
            if self.stopping.is_set():
                return False

    async def take_run(self, queue: Sequence[Record], handled: Handled) -> None:
        """Take the first record of ``queue`` through, or a run of records from its
        head: call ``handled`` with those handled, in order, once they may be committed.

        A run is made of plain records (not replays, decodable, not parked) whose events
        ``runs`` takes together; it ends at the first record that is not, which is then
        taken on its own by the next call (its dead letters, parking, poison are this
        class's, one record at a time)."""
        if self.runs is not None:
            run = self._plain_run(queue, self.runs)
            if run:
                count = await self.runs.dispatch_run(run, handled)
                self.run_size = min(RUN_MAX, 2 * (count if count < len(run) else self.run_size))
                return
        record = queue[0]
        await self.take(record)
        handled([record])

    def _plain_run(self, queue: Sequence[Record], runs: Runs) -> list[tuple[Record, Event]]:
        run: list[tuple[Record, Event]] = []
        retry_topic, parks, decode, batchable, always = (
            self.retry_topic, self.parks, self.decode, runs.batchable, runs.always
        )  # fmt: skip
        for record in itertools.islice(queue, self.run_size):
            topic = record[0]  # .topic: an index is a third of a named tuple's getter
            if topic == retry_topic:
                break
            if parks and (topic, record.key) in self.log.by_key:
                break  # perhaps parked: see take
            try:
                event = decode(record)
            except Exception:
                break  # poison: see take
            if (topic, event.type) not in always and not batchable(record, event):
                break
            run.append((record, event))
        return run

    async def take(self, record: Record) -> None:
        """Take one fetched record through to its subscribers, or to the dead letters.
        Returning means the record may be committed."""
        replay: DeadLetter | None = None
        if record.topic == self.retry_topic:
            replay = await self._replayed(record)
            if replay is None:
                return
            record = replay.original()
        try:
            event = self.decode(record)
        except EventError as exc:
            await self._poison(record, exc, replay)
            return
        except Exception as exc:  # a codec bug must not stall the partition for good
            await self._poison(record, DecodeError(f"the codec failed: {exc!r}"), replay)
            return
        replay_of = replay.entry if replay is not None else None
        if self.parks and await self._parked(record, event, replay_of):
            return
        await self.dispatch(record, event, replay)
        if replay_of is not None:
            await self._resolved(replay_of)

    async def _replayed(self, record: Record) -> DeadLetter | None:
        """The entry a record of the retry topic carries, if it is to be handled."""
        try:
            replay = DeadLetter.from_bytes(record.value)
        except DecodeError as exc:
            await self._poison(record, exc, None)
            return None
        await self.log.refresh()
        if not self.log.unresolved(replay.entry):
            self.stats.skipped += 1  # a replay sent twice: handled the first time
            return None
        if replay.truncated:  # `replay` never sends one; another writer did
            log.error(
                "group %s: replayed dead letter %s holds only part of its event "
                "(cut at %d of %s bytes); not handled, it stays in the dead letters",
                self.group, replay.entry, len(replay.value), replay.value_size,
                extra=at(self.group, record, dead_letter=replay.entry),
            )  # fmt: skip
            self.stats.skipped += 1
            return None
        return replay

    async def _poison(self, record: Record, error: EventError, replay: DeadLetter | None) -> None:
        """A record that cannot be decoded: dead-lettered at once, never retried."""
        if not self.writes:
            report_poison(self.group, record, error, self.stats)
            return
        replay_of = replay.entry if replay is not None else None
        entry = self.log.entry(record, error, reason="poison", replay_of=replay_of)
        await self.log.write(entry, self.stopping)
        self.stats.undecodable += 1
        self.stats.dead_lettered += 1
        await self._resolved(replay_of)

    async def _parked(self, record: Record, event: Event, replay_of: str | None) -> bool:
        """In a sequenced group: park the event behind the earliest unresolved dead
        letter of its key, if there is one; whether it was parked."""
        if (record.topic, record.key) not in self.log.by_key:
            return False  # the common case: nothing of this key is dead-lettered
        await self.log.refresh()  # another process may have replayed or purged it
        blocker = self.log.blocker(record.topic, record.key, record.offset, replay_of)
        if blocker is None:
            return False
        where = (
            f"{blocker.type} {blocker.event_id} at {blocker.topic}[{blocker.partition}]"
            f"@{blocker.offset}, key {blocker.key!r}"
        )
        entry = self.log.entry(
            record, Parked(blocker.entry, where), reason="parked",
            event_id=event.id, event_type=event.type,
            correlationid=event.correlationid or event.id,
            parked_behind=blocker.entry, replay_of=replay_of,
        )  # fmt: skip
        await self.log.write(entry, self.stopping)
        self.stats.parked += 1
        self.stats.dead_lettered += 1
        await self._resolved(replay_of)
        return True

    async def _resolved(self, replay_of: str | None) -> None:
        if replay_of is not None:
            await self.log.mark("resolved", [replay_of], self.stopping)
