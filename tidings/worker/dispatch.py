"""One group's subscribers behind their middleware chains: an event to the handlers
that want it.

Plain ``def`` handlers run in a thread pool. Where every middleware of a handler's
chain acts only on errors (:meth:`~tidings.middleware.Middleware.only_on_error`: Retry
and DeadLetters do), a run of consecutive events of one partition is handled at once
(:meth:`Dispatcher.dispatch_run`): for plain def handlers, in a thread, in one hand-off
(the loop awaits one future per run, not one per event); for async handlers, by one
coroutine that awaits each handler in turn, without a chain of middleware coroutines
per event. An event whose call raised goes through its chain on the loop, which sees
that first attempt's error (docs/decisions/0013-plain-def-handlers-in-runs.md,
0019-async-handlers-in-runs.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tidings.context import Context, Publisher, causal_scope
from tidings.contracts import Registry
from tidings.dead_letters import DeadLetter, DeadLetterLog
from tidings.dead_letters.intake import Handled
from tidings.envelope import Event
from tidings.middleware import Delivery, Middleware, Next, compose
from tidings.middleware.base import SKIP, RunCalls
from tidings.shredding.fields import EXTENSION
from tidings.shredding.redaction import guarded
from tidings.stats import Durations, Stats
from tidings.subscriber import Subscriber
from tidings.transport import Record
from tidings.worker.personal import PersonalView
from tidings.worker.routes import LOOP, THREAD, Route, RouteTable

__all__ = ["RUN_SECONDS", "Dispatcher", "Stopping"]

# Handler time a run spends in its thread before it hands back to the loop (which then
# hands the rest over again): what a revocation or a commit waits for at most, besides
# the call under way.
RUN_SECONDS = 0.02
_RECORD = operator.itemgetter(0)  # a run's (record, event): the record


class Stopping(asyncio.Event):
    """A group's stop: an :class:`asyncio.Event` whose state is also the plain attribute
    ``now``, which runs read at every event (an attribute, not a call of ``is_set``)."""

    now = False

    def set(self) -> None:
        self.now = True
        super().set()

    def clear(self) -> None:
        self.now = False
        super().clear()


@dataclass(slots=True)
class _Run:
    """Events a thread handles one after the other. The thread counts them in ``done``
    and stops after the current one once the loop sets ``cut`` (or ``calls`` says so).
    ``stopped_at`` is the index of the subscriber whose call did not return normally
    at event ``done`` (``outcome``: what it raised, or the awaitable it returned).
    ``calls``: the part of a middleware that acts around each call (the inbox's)."""

    items: list[tuple[Record, Event, Route]]
    done: int = 0
    cut: bool = False
    stopped_at: int | None = None
    outcome: Any = None
    # The clock when the run started and when each of its events was done (read once
    # per event: the run's time check), if handling times are kept.
    marks: list[float] | None = None
    calls: RunCalls | None = None


class Dispatcher:
    """Calls the subscribers of one group, each through its own chain (the worker's
    middleware, without those that do nothing for it), the handler innermost."""

    def __init__(
        self,
        publisher: Publisher,
        registry: Registry,
        group: str,
        subscribers: Sequence[Subscriber],
        middleware: Sequence[Middleware],
        *,
        stats: Stats,
        stopping: Stopping,
        dead_letters: DeadLetterLog | None,
        threads: ThreadPoolExecutor | None,
        decode: Callable[[Record], Event],
        shared_events: bool = False,
        durations: Durations | None = None,
    ) -> None:
        self.publisher = publisher
        self.registry = registry
        self.group = group
        self.stats = stats
        self.stopping = stopping
        self.dead_letters = dead_letters
        self.threads = threads
        # The event read afresh from its record: for a later attempt of the one handler
        # given the event's own payload, which the first attempt may have changed.
        self.decode = decode
        # Whether the worker hands one decoded event to several groups (then every
        # handler gets a copy of a raw payload).
        self.shared_events = shared_events
        # Where each event's handling time goes (None: not timed, and not a clock read).
        self.durations = durations
        # What handlers are given of events with sealed personal fields.
        self.personal = PersonalView(getattr(publisher, "shredder", None))
        self.loop = asyncio.get_running_loop()
        # Which subscribers want which events, and how those are handled (routes.py);
        # its tables are this dispatcher's too (read on every event).
        table = self.table = RouteTable(subscribers, middleware, self._call, threads)
        self.by_topic, self.layers, self.parts = table.by_topic, table.layers, table.parts
        self.in_runs, self.routes, self.runs = table.in_runs, table.routes, table.runs
        self._route, self.batchable, self._parted = table.route, table.batchable, table.parted
        self.always = table.always

    @property
    def batches(self) -> bool:
        """Whether some events of this group may be handled in runs."""
        return bool(self.in_runs)

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    async def dispatch(self, record: Record, event: Event, replay: DeadLetter | None) -> None:
        """Hand ``event`` (read at ``record``) to each subscriber that wants it; for a
        replayed dead letter, to the handler that failed on it."""
        wanted = self.routes.get((record.topic, event.type))
        if wanted is None:
            wanted = self._route(record.topic, event.type)
        replay_of = None
        if replay is not None:
            replay_of = replay.entry
            if replay.handler is not None:
                wanted = [w for w in wanted if w[0].name == replay.handler] or wanted
        if not wanted:
            self.stats.skipped += 1
            return
        # Everything a handler publishes is caused by this event (correlation kept), and
        # what it logs carries the call's coordinates: the scope is the call (its Scope
        # is made when a handler publishes, its log fields when something is logged).
        group, token = self.group, None
        start = time.perf_counter() if self.durations is not None else 0.0
        try:
            for sub, chain in wanted:
                set_token = causal_scope.set((group, sub, record, event))
                token = token or set_token
                await chain(
                    Delivery(
                        sub, event, record, self.group, self.stats, self.stopping, 1,
                        self.dead_letters, replay_of,
                    )
                )  # fmt: skip
        finally:
            if token is not None:
                causal_scope.reset(token)
        if self.durations is not None:
            self.durations.observe(time.perf_counter() - start)
        self.stats.handled += 1

    def _call(self, delivery: Delivery) -> Awaitable[None]:
        """The innermost step: the typed payload, the context, the handler. A plain
        function that returns an async handler's own coroutine, not a coroutine that
        awaits it: one frame less per event and subscriber."""
        sub, event, record = delivery.subscriber, delivery.event, delivery.record
        shared = self._shared(record, event)
        if delivery.attempt > 1 and not shared:
            event = self.decode(record)  # the first attempt had the event's own payload
        data = event.data if EXTENSION not in event.extensions else self.personal.data(sub, event)
        payload = self.registry.decode_payload(event.type, event.dataversion, data, shared=shared)
        ctx = None
        if sub.takes_context:
            ctx = self._context(event, record, delivery.attempt, delivery.session)
        if data is not event.data and self.personal.clear(sub):  # what it raises, redacted
            return guarded(
                lambda: self._handler_call(sub, payload, ctx, delivery), event.data, data
            )
        return self._handler_call(sub, payload, ctx, delivery)

    def _handler_call(
        self, sub: Subscriber, payload: Any, ctx: Context | None, delivery: Delivery
    ) -> Awaitable[None]:
        if sub.is_async:
            call: Awaitable[None]
            call = sub.handler(payload) if ctx is None else sub.handler(payload, ctx)
            return call
        return self._call_in_thread(sub, payload, ctx, delivery)

    def _shared(self, record: Record, event: Event) -> bool:
        """Whether the event's payload may be seen by more than one handler call (then
        each is given a copy of a raw one). A later attempt reads the event afresh."""
        return self.shared_events or len(self.routes[(record.topic, event.type)]) > 1

    def _context(self, event: Event, record: Record, attempt: int, session: Any) -> Context:
        return Context(
            self.publisher,
            event,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group=self.group,
            attempt=attempt,
            loop=self.loop,
            session=session,
            read_version=self.registry.read_version(event.type, event.dataversion),
        )

    async def _call_in_thread(
        self, sub: Subscriber, payload: Any, ctx: Context | None, delivery: Delivery
    ) -> None:
        args = (payload, ctx) if ctx is not None else (payload,)
        call = functools.partial(contextvars.copy_context().run, sub.handler, *args)
        if sub.timeout is not None and self.threads is not None:
            # The thread's own future, for the Deadline middleware to leave running.
            delivery.thread = self.threads.submit(call)
            result = await asyncio.wrap_future(delivery.thread, loop=self.loop)
        else:
            result = await self.loop.run_in_executor(self.threads, call)
        if inspect.isawaitable(result):  # an async callable we could not tell
            await result

    # -- runs of events ---------------------------------------------------------------

    async def dispatch_run(self, run: Sequence[tuple[Record, Event]], handled: Handled) -> int:
        """Handle the events of ``run`` (each :meth:`batchable`, in their partition's
        order) one after the other, until a call does not return normally, the group
        stops or the run has had its time (:data:`RUN_SECONDS`); call ``handled`` with
        the records handled, in order; return how many (at least one).
        The event whose call raised is taken through its chain here, then counts among
        them; those after it are not handled. Plain def handlers are called in one
        thread, async ones on the loop; a run ends where its events' kind changes."""
        record, event = run[0]
        if self.runs[(record.topic, event.type)] == LOOP:
            return await self._run_on_loop(run, handled)
        items = []
        routes, runs, parts = self.routes, self.runs, self.parts
        # Which subscriber a middleware's part serves: asked only of a group that has one.
        parted = self._parted(routes[(record.topic, event.type)]) if parts else None
        for record, event in run:
            key = (record.topic, event.type)
            route = routes[key]
            if runs[key] != THREAD or (parts and self._parted(route) is not parted):
                break
            items.append((record, event, route))
        calls = None
        if parted is not None:
            part = self.parts[id(parted)]
            calls = await part.open_run(parted, [e for _, e, _ in items], self.stats)
            if calls is None:  # not now: the first event through the chain
                record, event, _ = items[0]
                await self.dispatch(record, event, None)
                handled([record])
                return 1
            del items[calls.count :]
        batch = _Run(items, marks=None if self.durations is None else [], calls=calls)
        call = functools.partial(contextvars.copy_context().run, self._run_in_thread, batch)
        try:
            await self.loop.run_in_executor(self.threads, call)
        except BaseException as exc:
            if calls is not None:
                calls.abandon()
            if not isinstance(exc, asyncio.CancelledError):
                raise
            # Abandoned (a revocation or a shutdown that waited long enough): the thread
            # ends after the event it is on; what it finished may be committed.
            batch.cut = True
            self._settle(batch, handled)
            raise
        if calls is not None:
            await calls.finish()
        self._settle(batch, handled)
        if batch.stopped_at is None:
            return batch.done
        record, event, route = items[batch.done]
        await self._resume(record, event, route, batch.stopped_at, batch.outcome)
        handled([record])
        return batch.done + 1

    def _settle(self, batch: _Run, handled: Handled) -> None:
        done = batch.done
        handled([record for record, _, _ in batch.items[:done]])
        self.stats.handled += done
        if batch.marks is not None and self.durations is not None:
            # An abandoned run's thread may still be between two events: what it has.
            self.durations.observe_marks(batch.marks, min(done, len(batch.marks) - 1))

    def _run_in_thread(self, batch: _Run) -> None:
        """In a worker thread: each event's handlers, in order, each call in a context
        of its own (a copy of the loop's), as a single call in a thread has."""
        stopping, marks, clock = self.stopping, batch.marks, time.perf_counter
        now = clock()
        until = now + RUN_SECONDS
        if marks is not None:
            marks.append(now)
        base = contextvars.copy_context()
        try:
            for n, (record, event, route) in enumerate(batch.items):
                if n:
                    now = clock()  # the previous event's end, and the run's time check
                    if marks is not None:
                        marks.append(now)
                    if batch.cut or stopping.now or now > until:
                        return
                shared = self.shared_events or len(route) > 1
                for k, (sub, _) in enumerate(route):
                    try:
                        if batch.calls is None:
                            result = base.copy().run(self._scoped_call, sub, record, event, shared)
                        else:
                            result = self._call_around(batch, base, sub, record, event, shared)
                    except BaseException as exc:  # the chain, on the loop, decides
                        batch.stopped_at, batch.outcome = k, exc
                        return
                    if result is not None and inspect.isawaitable(result):
                        batch.stopped_at, batch.outcome = k, result  # awaited on the loop
                        return
                batch.done = n + 1
        finally:
            if marks is not None and len(marks) == batch.done:
                marks.append(clock())  # the last event's end

    def _call_around(
        self,
        batch: _Run,
        base: contextvars.Context,
        sub: Subscriber,
        record: Record,
        event: Event,
        shared: bool,
    ) -> Any:
        """A call of a run with a middleware's part around it (``batch.calls``); a part
        that says the run must not go on cuts it after this event."""
        calls = batch.calls
        assert calls is not None
        session = calls.before(event)
        if session is SKIP:
            return None
        try:
            result = base.copy().run(self._scoped_call, sub, record, event, shared, session)
        except BaseException:
            calls.after(False)
            raise
        if not calls.after(result is None or not inspect.isawaitable(result)):
            batch.cut = True
        return result

    def _scoped_call(
        self, sub: Subscriber, record: Record, event: Event, shared: bool, session: Any = None
    ) -> Any:
        causal_scope.set((self.group, sub, record, event))  # in this call's own context
        return self._first_call(sub, record, event, shared, session)

    def _first_call(
        self, sub: Subscriber, record: Record, event: Event, shared: bool, session: Any = None
    ) -> Any:
        """The first attempt of a handler at ``event`` in a run: what the handler
        returns (an async handler's coroutine). ``session``: its ``ctx.session``. What it
        raises, the run hands to :meth:`_resume`, which cuts out personal values."""
        data = event.data if EXTENSION not in event.extensions else self.personal.data(sub, event)
        payload = self.registry.decode_payload(event.type, event.dataversion, data, shared=shared)
        if not sub.takes_context:
            return sub.handler(payload)
        return sub.handler(payload, self._context(event, record, 1, session))

    async def _run_on_loop(self, run: Sequence[tuple[Record, Event]], handled: Handled) -> int:
        """:meth:`dispatch_run` for async handlers: each awaited in turn, in this task,
        each call the causal scope. ``done``: the events handled, however the run ends;
        ``resumed``: the one taken through its chain (which counted and timed itself)."""
        stopping, kinds = self.stopping, self.runs
        first_call, set_scope, group = self._first_call, causal_scope.set, self.group
        clock, durations = time.perf_counter, self.durations
        until = (now := clock()) + RUN_SECONDS
        # The clock at the start and at each event's end (read once per event: the time
        # check), if handling times are kept; counted once per run, as the handled.
        marks = None if durations is None else [now]
        done = resumed = 0
        token = set_scope(None)
        # The route, and whether its handler is called straight: again where these change.
        topic, event_type, version = run[0][0].topic, run[0][1].type, run[0][1].dataversion
        route, shared, direct = self._on_loop(topic, event_type, version)
        try:
            for done, (record, event) in enumerate(run):  # done: read in finally
                if done:
                    if (
                        event.type != event_type or record[0] != topic  # .topic
                        or event.dataversion != version
                    ):  # fmt: skip
                        topic, event_type, version = record.topic, event.type, event.dataversion
                        if kinds[(topic, event_type)] != LOOP:
                            return done
                        route, shared, direct = self._on_loop(topic, event_type, version)
                    now = clock()  # the previous event's end, and the run's time check
                    if marks is not None:
                        marks.append(now)
                    if stopping.now or now > until:
                        return done
                if direct is not None and not event.extensions:  # _first_call, inline
                    set_scope((group, direct, record, event))
                    try:
                        await direct.handler(event.data)
                    except Exception as exc:
                        await self._resume(record, event, route, 0, exc)
                        done, resumed = done + 1, 1
                        return done
                else:
                    for k, (sub, _) in enumerate(route):
                        set_scope((group, sub, record, event))
                        try:
                            await first_call(sub, record, event, shared)
                        except Exception as exc:  # the chain decides, as in a thread's run
                            await self._resume(record, event, route, k, exc)
                            done, resumed = done + 1, 1
                            return done
            done = len(run)
            return done
        finally:
            causal_scope.reset(token)
            handled(list(map(_RECORD, run[:done])))
            done -= resumed
            self.stats.handled += done
            if marks is not None and durations is not None:
                if len(marks) == done:
                    marks.append(clock())  # the last event's end
                durations.observe_marks(marks, done)

    def _on_loop(
        self, topic: str, event_type: str, version: int | None
    ) -> tuple[Route, bool, Subscriber | None]:
        """An async run's route, whether its payload is shared, and the subscriber
        whose handler gets an event's data itself (one without extensions): the only
        one, without context, of a payload neither shared nor modelled; else None."""
        route = self.routes[(topic, event_type)]
        shared = self.shared_events or len(route) > 1
        sub = route[0][0]
        if shared or sub.takes_context or not self.registry.passes_raw(event_type, version):
            return route, shared, None
        return route, shared, sub

    async def _resume(
        self, record: Record, event: Event, route: Route, first: int, outcome: Any
    ) -> None:
        """The event a run stopped at: the subscribers before ``first`` were called;
        that one's chain gets the first attempt's ``outcome`` (what it raised, or the
        awaitable it returned), and the subscribers after it are called as
        :meth:`dispatch` calls them (timed from here: the first attempt's time is the
        run's). Personal values given in clear are cut out of what it raised first."""
        if isinstance(outcome, BaseException):
            self.personal.redact(route[first][0], event, outcome)
        start = time.perf_counter() if self.durations is not None else 0.0
        token = causal_scope.set(None)
        try:
            for k in range(first, len(route)):
                sub, chain = route[k]
                causal_scope.set((self.group, sub, record, event))
                if k == first:
                    chain = compose(self.layers[id(sub)], self._resumed(outcome))
                await chain(
                    Delivery(
                        sub, event, record, self.group, self.stats, self.stopping, 1,
                        self.dead_letters, None,
                    )
                )  # fmt: skip
        finally:
            causal_scope.reset(token)
        if self.durations is not None:
            self.durations.observe(time.perf_counter() - start)
        self.stats.handled += 1

    def _resumed(self, outcome: Any) -> Next:
        """An innermost step whose first call gives ``outcome`` (raises it if it is an
        exception, else awaits it); later calls (a retry's) call the handler."""
        first = [outcome]

        async def step(delivery: Delivery) -> None:
            if not first:
                await self._call(delivery)
                return
            outcome = first.pop()
            if isinstance(outcome, BaseException):
                raise outcome
            await outcome

        return step
