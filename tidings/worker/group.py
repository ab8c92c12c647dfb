"""One group in a worker: fetch into per-partition lanes, hand each record to the
group's intake, commit what was finished.

Within a group, each partition is handled in order by its own task, and partitions run
concurrently (a group with ``concurrency`` K > 1 handles up to K keys of a partition at
once: :mod:`tidings.worker.keyed`). At most ``max_in_flight`` fetched events wait or
run at once (the group stops fetching until handlers catch up). Offsets are committed
after handling, in batches every ``commit_interval`` seconds, when a partition is
handed to another member, and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tidings.dead_letters import Intake
from tidings.errors import ConsumerDead, TransportError
from tidings.logs import at
from tidings.middleware.lane import LaneWork, lane_work
from tidings.transport import Consumer, Position, Record, StartFrom, TopicPartition, Transport
from tidings.worker.dispatch import Stopping
from tidings.worker.keyed import KeyedDrain

__all__ = ["GroupRunner", "Limits"]

log = logging.getLogger("tidings.worker")

UNHANDLED_PAUSE = 1.0  # seconds before a failed handling or fetch is tried again
_TOPIC_PARTITION: Callable[[Record], TopicPartition] = operator.itemgetter(0, 1)
_consume = deque  # deque(iterator, 0): runs the iterator through, keeps nothing


@dataclass(frozen=True)
class Limits:
    """A worker's settings, as each of its groups applies them (see :class:`Worker`)."""

    max_in_flight: int = 1000
    fetch_max: int = 500
    commit_interval: float = 0.05
    shutdown_timeout: float = 30.0
    revoke_timeout: float = 10.0


@dataclass
class _Lane:
    """One partition's queue of fetched records and the task that works through it."""

    queue: deque[Record] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    done: int | None = None  # next offset to commit
    generation: int = 0  # the lease generation of the record handled last
    committed: int | None = None
    # In a group with concurrency > 1 (tidings.worker.keyed): set when records are
    # added while its task runs; and whether the lane is being given up.
    wake: asyncio.Event | None = None
    closing: bool = False


@dataclass
class _Handled:
    """A lane's handled records whose offsets wait for the lane's open work (an inbox's
    batch) to commit; ``popped`` of them were taken off its queue (the others a
    revocation dropped while they ran: handled all the same, so committed)."""

    records: list[Record] = field(default_factory=list)
    popped: int = 0


class GroupRunner:
    """Runs one group: its consumer, its lanes, its commits. What a record means
    (replays, poison, parking, the subscribers) is the intake's business."""

    def __init__(
        self,
        transport: Transport,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        limits: Limits,
        make_intake: Callable[[Stopping], Intake],
        on_joined: Callable[[], None],
        concurrency: int = 1,
    ) -> None:
        self.group = group
        self.concurrency = concurrency  # events of distinct keys of a lane at once
        self.topics = topics
        self.limits = limits
        self.start_from = start_from
        self.on_joined = on_joined
        self.lanes: dict[TopicPartition, _Lane] = {}
        self.seen_assignment: frozenset[TopicPartition] = frozenset()
        self.loop = asyncio.get_running_loop()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.full = False  # room is clear: set it again once in_flight drops below the limit
        self.stopping = False
        self.stopped = Stopping()
        self.handled = asyncio.Event()  # set when an offset is ready to be committed
        self.fetching: asyncio.Future[bool] | None = None
        self.abandoned = 0  # handlers still running when the group had to stop
        self.intake = make_intake(self.stopped)
        self.consumer: Consumer = transport.consumer(
            group,
            [*topics, self.intake.retry_topic],
            start_from=start_from,
            on_revoke=self._on_revoke,
        )

    # -- the fetch loop -------------------------------------------------------

    async def run(self) -> None:
        await self.intake.start(self.start_from, self.topics)
        await self.consumer.start()
        self.on_joined()
        committer = self.loop.create_task(self._commit_loop())
        try:
            while not self.stopping and await self._fetch_once():
                pass
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            self.abandoned += await self._finish(set(self.lanes), self.limits.shutdown_timeout)
            await self.consumer.close()

    async def _fetch_once(self) -> bool:
        """One turn of the fetch loop; False when the group is to stop."""
        await self.room.wait()
        if self.stopping:
            return False
        want = min(self.limits.fetch_max, self.limits.max_in_flight - self.in_flight)
        self.fetching = asyncio.ensure_future(self._fetch_into_lanes(want))
        try:
            changed = await self.fetching
        except asyncio.CancelledError:
            if self.stopping:  # stop() interrupts a waiting fetch
                return False
            raise
        except ConsumerDead:
            raise  # nothing to wait for: the worker ends, non-zero, with the cause
        except TransportError:
            # The log may come back (a restarting broker, a locked file): keep the group
            # and what is in flight, and try again shortly.
            log.exception(
                "group %s: fetching failed; trying again in %.0fs",
                self.group,
                UNHANDLED_PAUSE,
                extra=at(self.group),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), UNHANDLED_PAUSE)
            return True
        if changed:
            # Partitions changed hands: learn what their previous owner dead-lettered
            # (and, in a sequenced group, parked) before their records are handled; the
            # lanes wait, filled but not started.
            if not await self.intake.catch_up():
                return False
            for tp, lane in self.lanes.items():
                if lane.queue:
                    self._start(tp, lane, False)
        return True

    async def _fetch_into_lanes(self, want: int) -> bool:
        """Fetch, and put the records in their lanes in the step the fetch returns in;
        return whether the assignment changed (the new records' lanes are then not
        started: ``run`` starts them once the intake has caught up).

        In the same step, because a revocation that runs after it finds the records in
        their lanes and drops them. With a loop turn in between (``run`` awaiting the
        fetch's task), the revocation could run first, and the records of a partition
        given up would be handled here while its next owner handled them too.
        """
        records = await self.consumer.fetch(want, timeout=0.25)
        assignment = self.consumer.assignment()
        changed = assignment != self.seen_assignment
        if changed:
            self.seen_assignment = assignment
        # A fetch returns each partition's records together: one lane step for each run.
        for tp, run in itertools.groupby(records, _TOPIC_PARTITION):
            lane = self.lanes.get(tp)
            if lane is None:
                lane = self.lanes[tp] = _Lane()
            lane.queue.extend(run)
            self._start(tp, lane, changed)
        self.in_flight += len(records)
        if self.in_flight >= self.limits.max_in_flight:
            self.room.clear()
            self.full = True
        return changed

    def _start(self, tp: TopicPartition, lane: _Lane, held: bool) -> None:
        """Start working through ``lane`` unless its task runs, or ``held``."""
        if not held and (lane.task is None or lane.task.done()):
            lane.task = self.loop.create_task(self._drain(tp, lane))
        elif lane.wake is not None:
            lane.wake.set()

    def stop(self) -> None:
        self.stopping = True
        self.stopped.set()
        self.room.set()
        if self.fetching is not None and not self.fetching.done():
            self.fetching.cancel()

    # -- handling ---------------------------------------------------------------

    async def _drain(self, tp: TopicPartition, lane: _Lane) -> None:
        if self.concurrency > 1:
            await self._drain_keyed(lane)
            return
        # What the middleware leaves open across this lane's deliveries (an inbox's
        # transaction): the offsets of the events in it wait for its commit.
        work = LaneWork()
        lane_work.set(work)  # this task's own context
        done = _Handled()
        try:
            await self._drain_into(lane, work, done)
            if done.records:  # stopping
                await self._settle(lane, work, done)
        finally:
            if work.holding:  # cancelled: its events are handled again by whoever is next
                await work.abandon()
            elif done.records:  # a run cut short at shutdown: what it handled is done
                self._advance(lane, done.records[-1])
            if done.popped:
                self._release(done.popped)

    async def _drain_into(self, lane: _Lane, work: LaneWork, done: _Handled) -> None:
        take, take_run = self.intake.take, self.intake.take_run
        # Runs of records for plain def handlers (else one at a time, one frame less).
        runs = self.intake.runs is not None

        def handled(records: list[Record]) -> None:
            """The records at the head of the lane's queue (those of a run, in order)
            were handled: off the queue, to be committed."""
            if not records:
                return
            queue, count = lane.queue, len(records)
            if count <= len(queue) and queue[0] is records[0] and queue[count - 1] is records[-1]:
                # Still there, all of them (a revocation leaves only the first record,
                # and records fetched later are other objects): off, in one C loop.
                _consume(map(operator.call, itertools.repeat(queue.popleft, count)), 0)
                done.popped += count
            else:  # a revocation dropped some meanwhile (they were in the run under way)
                for record in records:
                    if queue and queue[0] is record:
                        queue.popleft()
                        done.popped += 1
            # Those dropped were handled all the same: committed, not handled elsewhere.
            done.records += records

        while lane.queue and not self.stopping:
            try:
                if runs:
                    await take_run(lane.queue, handled)
                else:
                    record = lane.queue[0]
                    await take(record)
                    handled([record])
            except Exception:
                # An error that got past the middleware (a custom list without Retry,
                # or a middleware bug): the event is not handled, so it stays first in
                # its lane and uncommitted, and is tried again after a pause.
                if not lane.queue:
                    break
                record = lane.queue[0]
                log.exception(
                    "group %s: %s[%d]@%d was not handled; trying again in %.0fs",
                    self.group, record.topic, record.partition, record.offset,
                    UNHANDLED_PAUSE, extra=at(self.group, record),
                )  # fmt: skip
                await self._pause()
                continue
            if done.records and (not work.holding or not lane.queue or work.full or self.stopping):
                await self._settle(lane, work, done)

    async def _drain_keyed(self, lane: _Lane) -> None:
        """The lane of a group with concurrency > 1 (no lane work: each event is
        committed on its own by its middleware)."""
        lane_work.set(None)
        lane.wake = lane.wake or asyncio.Event()
        await KeyedDrain(
            self.group, lane.queue, lane.wake, self.concurrency, take=self.intake.take,
            closing=lambda: self.stopping or lane.closing,
            advance=lambda record: self._advance(lane, record), release=self._release,
            pause=self._pause,
        ).run()  # fmt: skip

    async def _pause(self) -> None:
        """Wait before handling again what failed (unless the group stops meanwhile)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), UNHANDLED_PAUSE)

    async def _settle(self, lane: _Lane, work: LaneWork, done: _Handled) -> None:
        """Commit the lane's open work, then let the handled records' offsets be
        committed; if that commit fails, put them back first in the lane, to be handled
        again."""
        records = done.records
        try:
            await work.settle()
        except Exception:
            log.exception(
                "group %s: committing the work of %d events failed; handling them again "
                "in %.0fs", self.group, len(records), UNHANDLED_PAUSE,
                extra=at(self.group, records[0] if records else None),
            )  # fmt: skip
            lane.queue.extendleft(reversed(records))
            self.in_flight += len(records) - done.popped  # those a revocation dropped
            done.records, done.popped = [], 0
            await self._pause()
            return
        self._advance(lane, records[-1])
        self._release(done.popped)
        done.records, done.popped = [], 0

    def _advance(self, lane: _Lane, last: Record) -> None:
        lane.done = last.offset + 1
        lane.generation = last.generation
        self.handled.set()

    def _release(self, count: int) -> None:
        self.in_flight -= count
        if self.full and self.in_flight < self.limits.max_in_flight:
            self.full = False
            self.room.set()

    # -- commits, revocation, shutdown ------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self.handled.wait()  # an idle group does not wake up to commit nothing
            await asyncio.sleep(self.limits.commit_interval)
            self.handled.clear()
            try:
                await self.commit()
            except Exception:
                self.handled.set()  # try again at the next interval
                log.exception(
                    "group %s: commit failed; will retry", self.group, extra=at(self.group)
                )

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {
            tp: Position(lane.done, lane.generation)
            for tp, lane in self.lanes.items()
            if lane.done is not None
            and lane.done != lane.committed
            and (only is None or tp in only)
        }
        if not offsets:
            return
        await self.consumer.commit(offsets)
        for tp, position in offsets.items():
            lane = self.lanes.get(tp)  # a revocation may have removed it meanwhile
            if lane is not None:
                lane.committed = position.offset

    async def _finish(self, tps: set[TopicPartition], timeout: float) -> int:
        """Drop what waits in these lanes, let running handlers end, commit; return how
        many handlers were still running after ``timeout`` (and were cancelled)."""
        tasks = [task for tp in tps if (task := self._drop_waiting(tp)) is not None]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning(
                    "group %s: a handler did not finish in %.0fs; cancelled",
                    self.group,
                    timeout,
                    extra=at(self.group),
                )
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            await self.commit(tps)
        except Exception:
            log.exception("group %s: final commit failed", self.group, extra=at(self.group))
        for tp in tps:
            lane = self.lanes.pop(tp, None)
            if lane is not None and lane.queue:
                self._release(len(lane.queue))
        return len(pending)

    def _drop_waiting(self, tp: TopicPartition) -> asyncio.Task[None] | None:
        """Drop the records waiting in ``tp``'s lane (not the one being handled);
        return the lane's task if it runs."""
        lane = self.lanes.get(tp)
        if lane is None:
            return None
        if self.concurrency > 1:  # a keyed lane's queue holds no record being handled
            lane.closing = True
            self._release(len(lane.queue))
            lane.queue.clear()
        elif lane.queue:
            running = lane.queue.popleft() if lane.task and not lane.task.done() else None
            self._release(len(lane.queue))
            lane.queue.clear()
            if running is not None:
                lane.queue.append(running)  # the one being handled stays until done
        if lane.task is not None and not lane.task.done():
            return lane.task
        return None

    async def _on_revoke(self, tps: frozenset[TopicPartition]) -> None:
        await self._finish(set(tps), self.limits.revoke_timeout)
