"""Handlers get runs of a partition's events: plain def handlers in one thread hand-off
(decision 0013), async ones awaited in turn by one coroutine (decision 0019). The same
scenarios for both kinds (order, failures in the middle of a run, stop, abandonment,
revocation, context variables and causation, the chains that keep one call at a time),
then what only one kind has (raw payloads: test_worker_payloads.py)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tidings import Context, Inbox, Tidings, Worker
from tidings.context import current_scope
from tidings.dead_letters import open_log
from tidings.middleware import Delivery, Middleware, Next, Retry, default_middleware
from tidings.testing import eventually, running
from tidings.transport import Record
from tidings.worker import dispatch
from tidings.worker.dispatch import Dispatcher

TOPIC = "task-events"
FAST = default_middleware(Retry(base_delay=0.01, max_delay=0.02))
BLOCK = 10.0  # seconds a handler waits for a gate at most (the test opens it sooner)
KINDS = pytest.mark.parametrize("kind", ["def", "async"])

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
per_call: contextvars.ContextVar[int] = contextvars.ContextVar("per_call", default=0)

Body = Callable[[Any, Context], "Awaitable[Any] | None"]


class Gate:
    """Where a handler stops, for the payloads ``at`` picks, until the test opens it:
    blocking its thread (def) or awaiting on the loop (async)."""

    def __init__(self, kind: str, at: Callable[[Any], bool]) -> None:
        self.at = at
        self.reached = threading.Event()
        self.cancelled = False  # an async wait cancelled (a run abandoned)
        self._open: threading.Event | asyncio.Event = (
            threading.Event() if kind == "def" else asyncio.Event()
        )

    def open(self) -> None:
        self._open.set()

    def block(self) -> None:
        assert isinstance(self._open, threading.Event)
        self.reached.set()
        self._open.wait(BLOCK)

    async def wait(self) -> None:
        assert isinstance(self._open, asyncio.Event)
        self.reached.set()
        try:
            await asyncio.wait_for(self._open.wait(), BLOCK)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def handler(kind: str, body: Body, gate: Gate | None = None) -> Callable[..., Any]:
    """A handler of ``kind`` ("def": run in a thread; "async": on the loop) that waits at
    ``gate`` first when it asks for the payload, then calls ``body(payload, ctx)`` (an
    async handler awaits what ``body`` returns, if anything: e.g. ``ctx.publish(...)``)."""
    if kind == "def":

        def in_thread(payload: Any, ctx: Context) -> None:
            if gate is not None and gate.at(payload):
                gate.block()
            body(payload, ctx)

        return in_thread

    async def on_loop(payload: Any, ctx: Context) -> None:
        if gate is not None and gate.at(payload):
            await gate.wait()
        result = body(payload, ctx)
        if result is not None:
            await result

    return on_loop


def make_app(partitions: int = 1) -> Tidings:
    return Tidings(f"memory://runs-{uuid.uuid4().hex}?partitions={partitions}", service="test")


async def publish(app: Tidings, count: int, key: str = "k", type: str = "note.added") -> None:
    await app.publish_many(
        TOPIC, [{"seq": i, "items": []} for i in range(count)], type=type, subject=key
    )


async def committed(app: Tidings, group: str) -> dict[int, int | None]:
    for info in await app.transport.groups():
        if info.group == group:
            return {p.partition: p.committed for p in info.partitions if p.topic == TOPIC}
    return {}


class Runs(list[int]):
    """How many events each run handled, in order; ``given``: (events given, events
    handled) of each."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[tuple[int, int]] = []


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Runs:
    """Every run the dispatchers handled; runs are not cut by time (a busy machine would
    otherwise cut them anywhere)."""
    monkeypatch.setattr(dispatch, "RUN_SECONDS", 60.0)
    sizes = Runs()
    original = Dispatcher.dispatch_run

    async def recording(self: Dispatcher, run: Sequence[tuple[Record, Any]], handled: Any) -> int:
        count = await original(self, run, handled)
        sizes.append(count)
        sizes.given.append((len(run), count))
        return count

    monkeypatch.setattr(Dispatcher, "dispatch_run", recording)
    return sizes


# -- both kinds ------------------------------------------------------------------------


@KINDS
async def test_a_handler_gets_each_key_in_order_several_events_per_run(
    kind: str, runs: Runs
) -> None:
    app = make_app(partitions=2)
    seen: list[tuple[str, int]] = []
    threads: set[int] = set()

    def body(payload: Any, ctx: Context) -> Awaitable[None] | None:
        seen.append((ctx.subject or "", payload["seq"]))
        threads.add(threading.get_ident())
        if kind == "async" and payload["seq"] % 7 == 0:
            return asyncio.sleep(0)  # a handler that really waits, now and then
        return None

    app.subscriber(TOPIC, group="g")(handler(kind, body))
    async with app:
        for key in ("a", "b", "c", "d"):
            await publish(app, 50, key)
        async with running(app) as worker:
            await eventually(lambda: len(seen) == 200, what="200 handled")
            await eventually(lambda: worker.stats.handled == 200)
        assert sum(v or 0 for v in (await committed(app, "g")).values()) == 200
    for key in ("a", "b", "c", "d"):
        assert [s for k, s in seen if k == key] == list(range(50))
    if kind == "def":
        assert threading.get_ident() not in threads  # in the pool's threads
    else:
        assert threads == {threading.get_ident()}  # on the loop
    assert sum(runs) == 200
    assert max(runs) > 1  # several events per run (one hand-off for def), not one


@KINDS
async def test_runs_cut_by_their_time_decode_fewer_events_ahead(
    kind: str, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow handler: each run is cut after its first event; the next runs are given
    two events, not a full run decoded for nothing."""
    monkeypatch.setattr(dispatch, "RUN_SECONDS", 0.0)
    app = make_app()
    seen: list[int] = []
    app.subscriber(TOPIC, group="g")(handler(kind, lambda payload, _: seen.append(payload["seq"])))
    async with app:
        await publish(app, 10)
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="10 handled")
    assert seen == list(range(10))
    assert runs.given == [(10, 1), *[(2, 1)] * 8, (1, 1)]


@KINDS
async def test_a_failure_in_the_middle_of_a_run_is_retried_then_the_run_goes_on(
    kind: str, runs: Runs
) -> None:
    app = make_app()
    calls: list[tuple[int, int]] = []

    def body(payload: Any, ctx: Context) -> None:
        calls.append((payload["seq"], ctx.attempt))
        if payload["seq"] == 4 and ctx.attempt == 1:
            raise RuntimeError("smtp is down")

    app.subscriber(TOPIC, group="g")(handler(kind, body))
    async with app:
        await publish(app, 10)
        async with running(app, middleware=FAST) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="10 handled")
        assert await committed(app, "g") == {0: 10}
    assert calls == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (4, 2)] + [
        (i, 1) for i in range(5, 10)
    ]
    assert worker.stats.failed_attempts == 1
    # The first run ended at the failed event (handled, through the retry, on the loop).
    assert runs == [5, 5]


@KINDS
async def test_a_run_member_that_keeps_failing_is_dead_lettered_as_it_was_published(
    kind: str, runs: Runs
) -> None:
    app = make_app()
    calls: list[tuple[int, int, Any, Any]] = []

    def body(payload: Any, ctx: Context) -> None:
        calls.append((payload["seq"], ctx.attempt, orjson.dumps(payload), ctx.event.data))
        if payload["seq"] == 4:
            payload["items"].append(ctx.attempt)  # changed, then given up on
            raise ValueError("never works")

    handle = app.subscriber(TOPIC, group="g")(handler(kind, body))
    async with app:
        await publish(app, 10)
        slow = default_middleware(Retry(max_attempts=2, base_delay=0.01, max_delay=0.02))
        async with running(app, middleware=slow) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="10 handled")
        log = await open_log(app.transport, "g")
        ((entry, _),) = log.listing()
    assert [(seq, attempt) for seq, attempt, _, _ in calls] == [
        (0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (4, 2),
        (5, 1), (6, 1), (7, 1), (8, 1), (9, 1),
    ]  # fmt: skip
    # The second attempt saw the event as published (read afresh), not as the first
    # attempt left it, in its payload and in ctx.event.
    assert calls[5][2] == orjson.dumps({"seq": 4, "items": []})
    assert calls[5][3] == {"seq": 4, "items": [2]}  # its own change only
    assert (entry.handler, entry.attempts, entry.reason) == (handle.__qualname__, 2, "failed")
    assert orjson.loads(entry.value)["data"] == {"seq": 4, "items": []}
    assert worker.stats.dead_lettered == 1
    assert runs == [5, 5]


@KINDS
async def test_in_a_sequenced_group_a_run_member_dead_lettered_parks_its_key_behind_it(
    kind: str, runs: Runs
) -> None:
    app = make_app()
    app.group("g", sequenced=True)
    handled: list[tuple[str, int]] = []

    def body(payload: Any, ctx: Context) -> None:
        if (ctx.subject, payload["seq"]) == ("a", 1):
            raise ValueError("never works")
        handled.append((ctx.subject or "", payload["seq"]))

    app.subscriber(TOPIC, group="g")(handler(kind, body))
    async with app:
        # One partition: a0 a1 b0 a2 b1, in this order.
        for key, seq in (("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1)):
            await app.publish(TOPIC, {"seq": seq}, type="note.added", subject=key)
        once = default_middleware(Retry(max_attempts=1))
        async with running(app, middleware=once) as worker:
            await eventually(lambda: len(handled) == 3, what="a0, b0, b1")
            await eventually(lambda: worker.stats.parked == 1, what="a2 parked")
        log = await open_log(app.transport, "g")
        reasons = sorted((e.offset, e.reason) for e, _ in log.listing())
    assert handled == [("a", 0), ("b", 0), ("b", 1)]
    assert reasons == [(1, "failed"), (3, "parked")]
    assert runs[0] == 2  # a0, then a1 failed: the run ended there


@KINDS
async def test_a_payload_not_matching_its_model_in_a_run_is_dead_lettered_at_once(
    kind: str, runs: Runs
) -> None:
    app = make_app()

    class Note(BaseModel):
        seq: int

    app.event("note.typed")(Note)
    seen: list[int] = []
    app.subscriber(TOPIC, group="g")(handler(kind, lambda payload, _: seen.append(payload.seq)))
    async with app:
        for i in range(5):
            value = {"wrong": "shape"} if i == 2 else {"seq": i}
            await app.publish(TOPIC, value, type="note.typed", subject="k", check=i != 2)
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 5, what="5 taken")
        log = await open_log(app.transport, "g")
        ((entry, _),) = log.listing()
    assert seen == [0, 1, 3, 4]
    assert (entry.offset, entry.reason, entry.attempts) == (2, "poison", 1)
    assert worker.stats.undecodable == 1
    assert worker.stats.failed_attempts == 0  # never retried
    assert runs == [3, 2]


def start_worker(app: Tidings, **options: Any) -> tuple[Worker, asyncio.Event, Any]:
    """A worker running in a task of its own: it, its stop signal and its task."""
    worker = Worker(app, **options)
    stop = asyncio.Event()
    return worker, stop, asyncio.create_task(worker.run(stop))


@KINDS
async def test_a_stop_in_the_middle_of_a_run_commits_what_was_handled_and_no_more(
    kind: str, runs: Runs
) -> None:
    app = make_app()
    handled: list[int] = []
    gate = Gate(kind, at=lambda payload: payload["seq"] == 3 and not handled.count(3))
    app.subscriber(TOPIC, group="g")(
        handler(kind, lambda payload, _: handled.append(payload["seq"]), gate)
    )
    async with app:
        await publish(app, 10)
        # Only the final commit commits.
        worker, stop, task = start_worker(app, commit_interval=60)
        await eventually(gate.reached.is_set, what="the handler at event 3")
        stop.set()
        await eventually(lambda: all(r.stopping for r in worker._runners), what="stopping")
        gate.open()
        await asyncio.wait_for(task, 5)
        assert handled == [0, 1, 2, 3]
        assert await committed(app, "g") == {0: 4}

        async with running(app) as again:
            await eventually(lambda: again.stats.handled == 6, what="the rest")
    assert handled == list(range(10))  # each once


@KINDS
async def test_a_run_abandoned_at_shutdown_commits_what_it_finished_and_stops(
    kind: str, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    handled: list[int] = []
    gate = Gate(kind, at=lambda payload: payload["seq"] == 3)
    thread_done = threading.Event()
    original = Dispatcher._run_in_thread

    def watched(self: Dispatcher, batch: Any) -> None:
        try:
            original(self, batch)
        finally:
            thread_done.set()

    monkeypatch.setattr(Dispatcher, "_run_in_thread", watched)
    app.subscriber(TOPIC, group="g")(
        handler(kind, lambda payload, _: handled.append(payload["seq"]), gate)
    )
    async with app:
        await publish(app, 10)
        worker, stop, task = start_worker(app, commit_interval=60, shutdown_timeout=0.05)
        await eventually(gate.reached.is_set, what="the handler at event 3")
        stop.set()
        await asyncio.wait_for(task, 5)  # gave up waiting for event 3
        assert worker.stats.abandoned == 1
        assert await committed(app, "g") == {0: 3}
        if kind == "def":
            # A thread cannot be cancelled: the run's thread ends the call under way
            # (once the gate opens), then stops; that event was not committed.
            gate.open()
            await eventually(thread_done.is_set, what="the abandoned run ended")
            assert handled == [0, 1, 2, 3]  # the call under way ended; no further event
        else:
            # On the loop, abandoning cancels the call under way.
            assert handled == [0, 1, 2]
            assert gate.cancelled
            assert not thread_done.is_set()


@KINDS
async def test_a_revocation_in_the_middle_of_a_run_commits_what_the_run_handled(
    kind: str, runs: Runs
) -> None:
    """The run goes on (in its thread, or its coroutine) after the revocation dropped the
    lane's waiting records: what it handles is committed before the partition is let
    go, so its next owner does not handle it again."""
    app = make_app()
    handled: list[int] = []
    gate = Gate(kind, at=lambda payload: payload["seq"] == 3 and 3 not in handled)
    app.subscriber(TOPIC, group="g")(
        handler(kind, lambda payload, _: handled.append(payload["seq"]), gate)
    )
    async with app:
        await publish(app, 10)
        # Only the revocation's commit commits.
        worker, stop, task = start_worker(app, commit_interval=60)
        await eventually(gate.reached.is_set, what="the handler at event 3")
        (runner,) = worker._runners
        lane = runner.lanes[(TOPIC, 0)]
        consumer = runner.consumer
        revoking = asyncio.create_task(consumer.revoke(consumer.assignment()))
        await eventually(lambda: len(lane.queue) == 1, what="the waiting records dropped")
        gate.open()
        await asyncio.wait_for(revoking, 5)
        assert await committed(app, "g") == {0: len(handled)}
        stop.set()
        await asyncio.wait_for(task, 5)

        async with running(app):
            await publish(app, 1)
            await eventually(lambda: 0 in handled[10:], what="the next owner's event")
    assert handled == [*range(10), 0]  # each once, then the new one


@KINDS
async def test_handlers_in_runs_see_context_variables_and_publish_with_causation(
    kind: str, runs: Runs
) -> None:
    app = make_app()
    seen: list[tuple[Any, str, int, int, str]] = []

    def body(payload: Any, ctx: Context) -> Awaitable[Any] | None:
        seen.append((current_scope(), request_id.get(), payload["seq"], per_call.get(), ctx.id))
        reply = {"of": payload["seq"]}
        if kind == "async":
            return ctx.publish(TOPIC, reply, type="note.seen", subject="k")
        # Each call of a def run has a context of its own (a copy of the loop's, as one
        # call in a thread had): what it sets must not leak into the next event's call.
        # An async run's calls share the lane task's context, as dispatch gave them.
        per_call.set(payload["seq"] + 1)
        ctx.publish_sync(TOPIC, reply, type="note.seen", subject="k")
        return None

    app.subscriber(TOPIC, group="g", types=["note.added"])(handler(kind, body))
    replies: list[Any] = []

    @app.subscriber(TOPIC, group="h", types=["note.seen"])
    async def reply(payload: Any, ctx: Context) -> None:
        replies.append((payload["of"], ctx.event.causationid, ctx.event.correlationid))

    async with app:
        await publish(app, 5)
        token = request_id.set("req-1")
        try:
            async with running(app):
                await eventually(lambda: len(replies) == 5, what="5 replies")
        finally:
            request_id.reset(token)
        assert current_scope() is None  # the runs' scopes did not leak out
    ids = [event_id for *_, event_id in seen]
    assert [seq for _, _, seq, _, _ in seen] == list(range(5))
    for scope, request, _, leaked, event_id in seen:
        assert scope is not None
        assert scope.causationid == event_id
        assert request == "req-1"
        if kind == "def":
            assert leaked == 0
    assert sorted(replies) == [(i, ids[i], seen[i][0].correlationid) for i in range(5)]
    assert max(runs) > 1


@KINDS
async def test_handlers_behind_an_inbox_or_a_middleware_around_calls_go_one_by_one(
    kind: str, runs: Runs, tmp_path: Path
) -> None:
    """The inbox (a transaction around the call) and a middleware that acts around
    every call keep the path of one call at a time (one hand-off each for def),
    through the whole chain."""
    app = make_app()
    inbox = Inbox(f"sqlite:///{tmp_path / 'inbox.db'}")
    boxed: list[tuple[int, bool]] = []
    around: list[str] = []
    app.subscriber(TOPIC, group="boxed", inbox=inbox)(
        handler(kind, lambda payload, ctx: boxed.append((payload["seq"], ctx.session is not None)))
    )
    app.subscriber(TOPIC, group="plain")(
        handler(kind, lambda payload, _: around.append(f"call {payload['seq']}"))
    )

    class Around(Middleware):
        async def handle(self, delivery: Delivery, call_next: Next) -> None:
            if delivery.subscriber.group == "plain":
                around.append("before")
                await call_next(delivery)
                around.append("after")
            else:
                await call_next(delivery)

    try:
        async with app:
            await publish(app, 4)
            async with running(app, middleware=[*default_middleware(), Around()]) as worker:
                await eventually(lambda: worker.stats.handled == 8, what="both groups")
    finally:
        await inbox.close()
    assert boxed == [(i, True) for i in range(4)]
    assert around == [x for i in range(4) for x in ("before", f"call {i}", "after")]
    assert runs == []


@KINDS
async def test_a_watching_middleware_is_asked_only_about_the_events_of_chains_it_is_in(
    kind: str, runs: Runs
) -> None:
    """wants_chain is asked per event of the routes whose chains hold the middleware
    (the group it wraps), not of the others; the events it names leave the runs."""
    app = make_app()
    seen: dict[str, list[int]] = {"watched": [], "other": []}
    for group in seen:
        app.subscriber(TOPIC, group=group)(
            handler(kind, lambda payload, _, g=group: seen[g].append(payload["seq"]))
        )
    asked: list[int] = []

    class Watch(Middleware):
        def wraps(self, subscriber: Any) -> bool:
            return subscriber.group == "watched"

        def only_on_error(self, subscriber: Any) -> bool:
            return True

        def wants_chain(self, event: Any) -> bool:
            seq: int = event.data["seq"]
            asked.append(seq)
            return seq == 2  # through the chain, alone

    async with app:
        await publish(app, 5)
        async with running(app, middleware=[Watch(), *FAST]) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="both groups")
    assert seen == {"watched": [0, 1, 2, 3, 4], "other": [0, 1, 2, 3, 4]}
    assert sorted(set(asked)) == [0, 1, 2, 3, 4], "asked about each event of its group"
    assert len(asked) <= 10, "not about the other group's (5 events: asked at most twice)"
    assert sorted(runs) == [2, 2, 5], "the other group's one run; its own cut at event 2"


# -- one kind --------------------------------------------------------------------------


async def test_a_stop_while_a_run_member_waits_to_be_retried_commits_the_run_before_it(
    runs: Runs,
) -> None:
    app = make_app()
    fail = True
    handled: list[int] = []

    @app.subscriber(TOPIC, group="g")
    def handle(payload: Any) -> None:
        if payload["seq"] == 2 and fail:
            raise RuntimeError("down")
        handled.append(payload["seq"])

    async with app:
        await publish(app, 6)
        slow = default_middleware(Retry(base_delay=30.0, max_delay=30.0))
        async with running(app, middleware=slow, commit_interval=60) as worker:
            await eventually(lambda: worker.stats.failed_attempts == 1, what="a failure")
        # The stop cut the retry's wait short; what the run handled before is committed.
        assert handled == [0, 1]
        assert await committed(app, "g") == {0: 2}
        fail = False
        async with running(app):
            await eventually(lambda: len(handled) == 6, what="the rest")
    assert handled == list(range(6))


async def test_a_run_ends_where_def_and_async_handlers_take_turns(runs: Runs) -> None:
    """One partition with events for an async handler, then a def handler, then both:
    each kind has its own runs, in the partition's order; an event both want is
    handled through the chains."""
    app = make_app()
    order: list[tuple[str, int]] = []

    @app.subscriber(TOPIC, group="g", types=["note.added", "note.both"])
    async def on_loop(payload: Any, ctx: Context) -> None:
        order.append((f"async {ctx.type}", payload["seq"]))

    @app.subscriber(TOPIC, group="g", types=["note.moved", "note.both"])
    def in_thread(payload: Any, ctx: Context) -> None:
        order.append((f"def {ctx.type}", payload["seq"]))

    async with app:
        await publish(app, 3, type="note.added")
        await publish(app, 3, type="note.moved")
        await publish(app, 1, type="note.both")
        await publish(app, 2, type="note.added")
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 9, what="9 handled")
        assert await committed(app, "g") == {0: 9}
    assert order == [
        *[("async note.added", i) for i in range(3)],
        *[("def note.moved", i) for i in range(3)],
        ("async note.both", 0), ("def note.both", 0),
        *[("async note.added", i) for i in range(2)],
    ]  # fmt: skip
    assert runs == [3, 3, 2]
