"""The worker: runs an app's subscribers, one consumer per group.

Within a group, each partition is handled in order by its own task, and partitions
run concurrently. At most ``max_in_flight`` fetched events wait or run at once per
group (backpressure: the worker stops fetching until handlers catch up). Offsets are
committed after handling, in batches every ``commit_interval`` seconds, when a
partition is handed to another member, and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import inspect
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.codec import decode
from tidings.context import Context, _scope
from tidings.dead_letters import DeadLetter, DeadLetterQueue
from tidings.envelope import Event
from tidings.errors import (
    ConfigError,
    ConsumerDead,
    DecodeError,
    EventError,
    Parked,
    TransportError,
)
from tidings.middleware import (
    DeadLetters,
    Delivery,
    Middleware,
    Next,
    Stats,
    compose,
    default_middleware,
)
from tidings.middleware.poison import report_poison
from tidings.transport import Consumer, Position, Record, TopicPartition

if TYPE_CHECKING:
    from tidings.app import Tidings
    from tidings.subscriber import Component, Subscriber

__all__ = ["Worker", "tune_gc"]

log = logging.getLogger("tidings.worker")

# Allocations of container objects between two young collections, instead of Python's
# 700: see tune_gc.
YOUNG_COLLECTION_EVERY = 10_000


def tune_gc() -> tuple[int, int, int]:
    """Set up the garbage collector of a worker process once its app has started, as
    ``tidings run`` does; return the thresholds it replaced.

    A full collection, then ``gc.freeze()``: start-up objects (modules, the app) live as
    long as the process, so full collections no longer go through them (they were
    10-18 ms pauses in the latency benchmark). Then a young collection every 10,000
    allocations instead of 700: a worker keeps thousands of events in flight (fetched,
    queued per partition, waiting for their commit), and a young collection goes
    through all those that are still young; measured with three groups on NATS, the
    collector took 1.0 s of a 13 s run (0.2 s for the raw client) and full collections
    paused up to 87 ms; with this, throughput rose about 10% (docs/benchmarks.md). The
    older generations keep their thresholds. Call it once per process, from the code
    that owns the process (an application embedding a Worker decides for itself).
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, before[1], before[2])
    return before


UNHANDLED_PAUSE = 1.0  # seconds before a failed handling or fetch is tried again


@dataclass
class _Lane:
    """One partition's queue of fetched records and the task that works through it."""

    queue: deque[Record] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    done: int | None = None  # next offset to commit
    generation: int = 0  # the lease generation of the record handled last
    committed: int | None = None


class _GroupRunner:
    def __init__(self, worker: Worker, group: str, subscribers: list[Subscriber]) -> None:
        self.worker = worker
        self.app = worker.app
        self.group = group
        self.subscribers = subscribers
        self.by_topic: dict[str, list[Subscriber]] = {}
        for s in subscribers:
            self.by_topic.setdefault(s.topic, []).append(s)
        # (topic, event type) -> the subscribers that want it, each with its own chain
        # (without the middleware that do nothing for it).
        self.routes: dict[tuple[str, str], list[tuple[Subscriber, Next]]] = {}
        self.chains = {
            id(s): compose([m for m in worker.middleware if m.wraps(s)], self._call)
            for s in subscribers
        }
        self.dlq = DeadLetterQueue(
            self.app.transport, group, sequenced=self.app.group_settings(group).sequenced
        )
        # Without the DeadLetters middleware nothing is dead-lettered (poison is logged
        # and passed, failures block), but replays are still read and handled.
        self.dead_letters = (
            self.dlq if any(isinstance(m, DeadLetters) for m in worker.middleware) else None
        )
        self.retry_topic = self.dlq.retry_topic
        # A sequenced group parks the events of a key behind its dead letter.
        self.parks = self.dlq.sequenced and self.dead_letters is not None
        self.seen_assignment: frozenset[TopicPartition] = frozenset()
        self.lanes: dict[TopicPartition, _Lane] = {}
        self.loop = asyncio.get_running_loop()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.stopping = False
        self.stopped = asyncio.Event()
        self.handled = asyncio.Event()  # set when an offset is ready to be committed
        self.fetching: asyncio.Future[bool] | None = None
        self.consumer: Consumer = self.app.transport.consumer(
            group,
            [*sorted(self.by_topic), self.retry_topic],
            start_from=subscribers[0].start_from,
            on_revoke=self._on_revoke,
        )

    # -- the fetch loop -------------------------------------------------------

    async def run(self) -> None:
        await self.dlq.start()
        await self._read_retry_topic_from_start()
        await self.consumer.start()
        self.worker._joined(self)
        committer = asyncio.get_running_loop().create_task(self._commit_loop())
        try:
            while not self.stopping:
                await self.room.wait()
                if self.stopping:
                    break
                want = min(self.worker.fetch_max, self.worker.max_in_flight - self.in_flight)
                self.fetching = asyncio.ensure_future(self._fetch_into_lanes(want))
                try:
                    changed = await self.fetching
                except asyncio.CancelledError:
                    if self.stopping:  # stop() interrupts a waiting fetch
                        break
                    raise
                except ConsumerDead:
                    raise  # nothing to wait for: the worker ends, non-zero, with the cause
                except TransportError:
                    # The log may come back (a restarting broker, a locked file): keep
                    # the group and what is in flight, and try again shortly.
                    log.exception(
                        "group %s: fetching failed; trying again in %.0fs",
                        self.group, UNHANDLED_PAUSE,
                    )  # fmt: skip
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopped.wait(), UNHANDLED_PAUSE)
                    continue
                if changed:
                    # Partitions changed hands: learn what their previous owner
                    # dead-lettered (and, in a sequenced group, parked) before their
                    # records are handled; the lanes wait, filled but not started.
                    if not await self._learn_dead_letters():
                        break
                    for tp, lane in self.lanes.items():
                        if lane.queue:
                            self._start(tp, lane, False)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            stuck = await self._finish(set(self.lanes), self.worker.shutdown_timeout)
            self.worker.stats.abandoned += stuck
            await self.consumer.close()

    async def _learn_dead_letters(self) -> bool:
        """Read the group's dead letters up to now, trying again while the log fails
        (on NATS, a stream without a leader for a moment); False if stopped first."""
        while True:
            try:
                await self.dlq.log.refresh()
                return True
            except TransportError:
                log.exception(
                    "group %s: reading the dead letters failed; trying again in %.0fs",
                    self.group, UNHANDLED_PAUSE,
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), UNHANDLED_PAUSE)
            if self.stopping:
                return False

    async def _fetch_into_lanes(self, want: int) -> bool:
        """Fetch, and put the records in their lanes in the step the fetch returns in;
        return whether the assignment changed (the new records' lanes are then not
        started: ``run`` starts them once it has learnt the dead letters).

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
        for record in records:
            tp = (record.topic, record.partition)
            lane = self.lanes.get(tp)
            if lane is None:
                lane = self.lanes[tp] = _Lane()
            lane.queue.append(record)
            self._start(tp, lane, changed)
        self.in_flight += len(records)
        if self.in_flight >= self.worker.max_in_flight:
            self.room.clear()
        return changed

    def _start(self, tp: TopicPartition, lane: _Lane, held: bool) -> None:
        """Start working through ``lane`` unless its task runs, or ``held``."""
        if not held and (lane.task is None or lane.task.done()):
            lane.task = self.loop.create_task(self._drain(tp, lane))

    def stop(self) -> None:
        self.stopping = True
        self.stopped.set()
        self.room.set()
        if self.fetching is not None and not self.fetching.done():
            self.fetching.cancel()

    # -- handling ---------------------------------------------------------------

    async def _drain(self, tp: TopicPartition, lane: _Lane) -> None:
        while lane.queue and not self.stopping:
            record = lane.queue[0]
            try:
                await self._handle(record)
            except Exception:
                # An error that got past the middleware (a custom list without Retry,
                # or a middleware bug): the event is not handled, so it stays first in
                # its lane and uncommitted, and is tried again after a pause.
                log.exception(
                    "group %s: %s[%d]@%d was not handled; trying again in %.0fs",
                    self.group, record.topic, record.partition, record.offset,
                    UNHANDLED_PAUSE,
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopped.wait(), UNHANDLED_PAUSE)
                continue
            if lane.queue and lane.queue[0] is record:  # not dropped by a revoke meanwhile
                lane.queue.popleft()
                lane.done = record.offset + 1
                lane.generation = record.generation
                self.handled.set()
                self._release(1)

    def _release(self, count: int) -> None:
        self.in_flight -= count
        if self.in_flight < self.worker.max_in_flight:
            self.room.set()

    def _route(self, topic: str, event_type: str) -> list[tuple[Subscriber, Next]]:
        """The subscribers that want ``event_type`` on ``topic``, with their chains;
        made on the first such event, kept in ``routes``."""
        subscribers = self.by_topic.get(topic, ())
        route = [(s, self.chains[id(s)]) for s in subscribers if s.wants(event_type)]
        self.routes[(topic, event_type)] = route
        return route

    async def _handle(self, record: Record) -> None:
        stats = self.worker.stats
        replay: DeadLetter | None = None
        if record.topic == self.retry_topic:
            try:
                replay = DeadLetter.from_bytes(record.value)
            except DecodeError as exc:
                await self._poison(record, exc, None)
                return
            await self.dlq.log.refresh()
            if not self.dlq.log.unresolved(replay.entry):
                stats.skipped += 1  # a replay sent twice: handled the first time
                return
            if replay.truncated:  # `replay` never sends one; another writer did
                log.error(
                    "group %s: replayed dead letter %s holds only part of its event "
                    "(cut at %d of %s bytes); not handled, it stays in the dead letters",
                    self.group, replay.entry, len(replay.value), replay.value_size,
                )  # fmt: skip
                stats.skipped += 1
                return
            record = replay.original()
        try:
            event = self.worker.decoded(record)
        except EventError as exc:
            await self._poison(record, exc, replay)
            return
        except Exception as exc:  # a codec bug must not stall the partition for good
            await self._poison(record, DecodeError(f"the codec failed: {exc!r}"), replay)
            return
        replay_of = replay.entry if replay is not None else None
        if self.parks:
            blocker = await self._blocker(record, replay_of)
            if blocker is not None:
                await self.dlq.write(
                    record, _parked(blocker), reason="parked", stopping=self.stopped,
                    event_id=event.id, event_type=event.type,
                    correlationid=event.correlationid or event.id,
                    parked_behind=blocker.entry, replay_of=replay_of,
                )  # fmt: skip
                stats.parked += 1
                stats.dead_lettered += 1
                await self._resolved(replay_of)
                return
        wanted = self.routes.get((record.topic, event.type))
        if wanted is None:
            wanted = self._route(record.topic, event.type)
        if replay is not None and replay.handler is not None:
            # A replay is for the handler that failed, not its neighbours in the group.
            wanted = [w for w in wanted if w[0].name == replay.handler] or wanted
        if not wanted:
            stats.skipped += 1
            if replay_of is not None:
                await self._resolved(replay_of)
            return
        # Everything a handler publishes is caused by this event (correlation kept);
        # the event itself is the scope (current_scope makes the Scope when asked).
        token = _scope.set(event)
        try:
            for sub, chain in wanted:
                await chain(
                    Delivery(
                        sub, event, record, self.group, stats, self.stopped, 1,
                        self.dead_letters, replay_of,
                    )
                )  # fmt: skip
        finally:
            _scope.reset(token)
        if replay_of is not None:
            await self._resolved(replay_of)
        stats.handled += 1

    async def _poison(self, record: Record, error: EventError, replay: DeadLetter | None) -> None:
        """A record that cannot be decoded: dead-lettered at once, never retried."""
        if self.dead_letters is None:
            report_poison(self.group, record, error, self.worker.stats)
            return
        replay_of = replay.entry if replay is not None else None
        await self.dlq.write(
            record, error, reason="poison", stopping=self.stopped, replay_of=replay_of
        )
        self.worker.stats.undecodable += 1
        self.worker.stats.dead_lettered += 1
        await self._resolved(replay_of)

    async def _resolved(self, replay_of: str | None) -> None:
        if replay_of is not None:
            await self.dlq.mark("resolved", [replay_of], self.stopped)

    async def _blocker(self, record: Record, replay_of: str | None) -> DeadLetter | None:
        """In a sequenced group: the dead letter this record must wait behind."""
        if (record.topic, record.key) not in self.dlq.log.by_key:
            return None  # the common case: nothing of this key is dead-lettered
        await self.dlq.log.refresh()  # another process may have replayed or purged it
        return self.dlq.log.blocker(record.topic, record.key, record.offset, replay_of)

    async def _read_retry_topic_from_start(self) -> None:
        """A group that starts at ``latest`` must still read replays sent before its
        first run: give it committed offsets at the start of its retry topic."""
        if self.subscribers[0].start_from != "latest":
            return
        topic = self.retry_topic
        for info in await self.app.transport.groups():
            if info.group == self.group and any(p.topic == topic for p in info.partitions):
                return
        for topic_info in await self.app.transport.topics():
            if topic_info.name == topic:
                offsets = {p.partition: p.start for p in topic_info.partitions}
                await self.app.transport.set_offsets(self.group, topic, offsets, force=True)

    def _call(self, delivery: Delivery) -> Awaitable[None]:
        """The innermost step: the typed payload, the context, the handler. A plain
        function that returns an async handler's own coroutine, not a coroutine that
        awaits it: one frame less per event and subscriber."""
        sub, event, record = delivery.subscriber, delivery.event, delivery.record
        # Built afresh for each attempt: a handler may have changed the last one.
        payload = self.app.registry.decode_payload(event.type, event.dataversion, event.data)
        ctx = None
        if sub.takes_context:
            ctx = Context(
                self.app,
                event,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                group=self.group,
                attempt=delivery.attempt,
                loop=self.loop,
                session=delivery.session,
            )
        if sub.is_async:
            call: Awaitable[None]
            call = sub.handler(payload) if ctx is None else sub.handler(payload, ctx)
            return call
        return self._call_in_thread(sub, payload, ctx)

    async def _call_in_thread(self, sub: Subscriber, payload: Any, ctx: Context | None) -> None:
        args = (payload, ctx) if ctx is not None else (payload,)
        call = functools.partial(contextvars.copy_context().run, sub.handler, *args)
        result = await self.loop.run_in_executor(self.worker.threads, call)
        if inspect.isawaitable(result):  # an async callable we could not tell
            await result

    # -- commits, revocation, shutdown ------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self.handled.wait()  # an idle group does not wake up to commit nothing
            await asyncio.sleep(self.worker.commit_interval)
            self.handled.clear()
            try:
                await self.commit()
            except Exception:
                self.handled.set()  # try again at the next interval
                log.exception("group %s: commit failed; will retry", self.group)

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
        tasks = []
        for tp in tps:
            lane = self.lanes.get(tp)
            if lane is None:
                continue
            if lane.queue:
                running = lane.queue.popleft() if lane.task and not lane.task.done() else None
                self._release(len(lane.queue))
                lane.queue.clear()
                if running is not None:
                    lane.queue.append(running)  # the one being handled stays until done
            if lane.task is not None and not lane.task.done():
                tasks.append(lane.task)
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning(
                    "group %s: a handler did not finish in %.0fs; cancelled", self.group, timeout
                )
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            await self.commit(tps)
        except Exception:
            log.exception("group %s: final commit failed", self.group)
        for tp in tps:
            lane = self.lanes.pop(tp, None)
            if lane is not None and lane.queue:
                self._release(len(lane.queue))
        return len(pending)

    async def _on_revoke(self, tps: frozenset[TopicPartition]) -> None:
        await self._finish(set(tps), self.worker.revoke_timeout)


class Worker:
    """Runs the subscribers of ``app`` (all groups, or the ones named)."""

    def __init__(
        self,
        app: Tidings,
        groups: Sequence[str] | None = None,
        *,
        max_in_flight: int = 1000,
        fetch_max: int = 500,
        commit_interval: float = 0.05,
        shutdown_timeout: float = 30.0,
        revoke_timeout: float = 10.0,
        middleware: Sequence[Middleware] | None = None,
        sync_threads: int = 32,
        components: bool = True,
    ) -> None:
        if max_in_flight < 1 or fetch_max < 1:
            raise ConfigError("max_in_flight and fetch_max must be >= 1")
        self.app = app
        known = app.groups()
        if not known:
            raise ConfigError(f"app {app.service!r} has no subscribers to run")
        chosen = list(groups) if groups else known
        unknown = [g for g in chosen if g not in known]
        if unknown:
            raise ConfigError(
                f"unknown group(s) {', '.join(unknown)}; this app has: {', '.join(known)}"
            )
        self.groups = chosen
        self.max_in_flight = max_in_flight
        self.fetch_max = fetch_max
        self.commit_interval = commit_interval
        self.shutdown_timeout = shutdown_timeout
        self.revoke_timeout = revoke_timeout
        # Around every handler call, outermost first (see tidings.middleware).
        self.middleware = list(default_middleware() if middleware is None else middleware)
        # Synchronous handlers run here: their own pool, sized for I/O-bound work (mail,
        # webhooks), so that partitions are not limited to asyncio's default few threads.
        self.sync_threads = sync_threads
        self.threads: ThreadPoolExecutor | None = None
        self.stats = Stats()
        # Beside the groups: the app's components (outbox relays) and the relay of
        # delayed events, each guarded by a lease, so any number of workers may run them.
        self.components: list[Component] = []
        if components:
            self.components = list(app.components)
            relay = app.scheduler_relay()
            if relay is not None:
                self.components.append(relay)
        self._runners: list[_GroupRunner] = []
        # Set once every group has joined (its first assignment is known): a group that
        # starts at "latest" reads what is published from then on.
        self.ready = asyncio.Event()
        self._started: set[str] = set()
        self._stop_components = asyncio.Event()
        # Groups of one worker read the same records at about the same time: decode
        # each once. Events are immutable, so sharing them is safe; payload models are
        # built per handler call and never shared.
        self._decoded: dict[tuple[str, int, int], Event] = {}
        self._decoded_max = 4 * max_in_flight

    def decoded(self, record: Record) -> Event:
        """The event in ``record`` (raises EventError if it cannot be decoded)."""
        if len(self.groups) == 1:  # nobody to share the event with
            return decode(record.value, self.app.max_event_bytes)
        key = (record.topic, record.partition, record.offset)
        event = self._decoded.get(key)
        if event is None:
            event = decode(record.value, self.app.max_event_bytes)
            if len(self._decoded) >= self._decoded_max:
                self._decoded.clear()  # cheaper than evicting one by one
            self._decoded[key] = event
        return event

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the task is cancelled), then drain and commit."""
        self._runners = [
            _GroupRunner(self, g, [s for s in self.app.subscribers if s.group == g])
            for g in self.groups
        ]
        if any(not s.is_async for s in self.app.subscribers if s.group in self.groups):
            self.threads = ThreadPoolExecutor(self.sync_threads, "tidings-handler")
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(r.run()) for r in self._runners]
        self._stop_components = asyncio.Event()
        helpers = [loop.create_task(c.run(self._stop_components)) for c in self.components]
        stopper = loop.create_task((stop or asyncio.Event()).wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            stopper.cancel()
            results = await asyncio.gather(*tasks, *helpers, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("a group runner or component ended with an error: %r", result)
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)
                self.threads = None

    def _joined(self, runner: _GroupRunner) -> None:
        self._started.add(runner.group)
        if len(self._started) == len(self._runners):
            self.ready.set()

    def stop(self) -> None:
        for runner in self._runners:
            runner.stop()
        self._stop_components.set()

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        """SIGTERM and SIGINT set ``stop``: in-flight work finishes and is committed."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)


def _parked(blocker: DeadLetter) -> Parked:
    return Parked(
        blocker.entry,
        f"{blocker.type} {blocker.event_id} at {blocker.topic}[{blocker.partition}]"
        f"@{blocker.offset}, key {blocker.key!r}",
    )
