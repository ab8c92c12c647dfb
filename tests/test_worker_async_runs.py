"""Async handlers get runs of a partition's events, awaited in turn by one coroutine:
order, failures in the middle of a run, stop, revocation, context variables and
causation, and the chains that keep one event at a time (def runs:
test_worker_runs.py)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Sequence
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

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def make_app(partitions: int = 1) -> Tidings:
    return Tidings(f"memory://aruns-{uuid.uuid4().hex}?partitions={partitions}", service="test")


async def publish(app: Tidings, count: int, key: str = "k", type: str = "note.added") -> None:
    await app.publish_many(
        TOPIC, [{"seq": i, "items": []} for i in range(count)], type=type, subject=key
    )


async def committed(app: Tidings, group: str) -> dict[int, int | None]:
    for info in await app.transport.groups():
        if info.group == group:
            return {p.partition: p.committed for p in info.partitions if p.topic == TOPIC}
    return {}


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events each run handled; runs are not cut by time (a busy machine would
    otherwise cut them anywhere)."""
    monkeypatch.setattr(dispatch, "RUN_SECONDS", 60.0)
    sizes: list[int] = []
    original = Dispatcher.dispatch_run

    async def recording(self: Dispatcher, run: Sequence[tuple[Record, Any]], handled: Any) -> int:
        count = await original(self, run, handled)
        sizes.append(count)
        return count

    monkeypatch.setattr(Dispatcher, "dispatch_run", recording)
    return sizes


async def test_an_async_handler_gets_each_key_in_order_several_events_per_run(
    runs: list[int],
) -> None:
    app = make_app(partitions=2)
    seen: list[tuple[str, int]] = []
    threads: set[int] = set()

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any, ctx: Context) -> None:
        seen.append((ctx.subject or "", payload["seq"]))
        threads.add(threading.get_ident())
        if payload["seq"] % 7 == 0:
            await asyncio.sleep(0)  # a handler that really waits, now and then

    async with app:
        for key in ("a", "b", "c", "d"):
            await publish(app, 50, key)
        async with running(app) as worker:
            await eventually(lambda: len(seen) == 200, what="200 handled")
            await eventually(lambda: worker.stats.handled == 200)
        assert sum(v or 0 for v in (await committed(app, "g")).values()) == 200
    for key in ("a", "b", "c", "d"):
        assert [s for k, s in seen if k == key] == list(range(50))
    assert threads == {threading.get_ident()}  # on the loop
    assert sum(runs) == 200
    assert max(runs) > 1  # several events per run, not one


async def test_an_async_run_is_cut_by_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "RUN_SECONDS", 0.0)
    given: list[tuple[int, int]] = []
    original = Dispatcher.dispatch_run

    async def recording(self: Dispatcher, run: Sequence[tuple[Record, Any]], handled: Any) -> int:
        count = await original(self, run, handled)
        given.append((len(run), count))
        return count

    monkeypatch.setattr(Dispatcher, "dispatch_run", recording)
    app = make_app()
    seen: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any) -> None:
        seen.append(payload["seq"])

    async with app:
        await publish(app, 10)
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="10 handled")
    assert seen == list(range(10))
    assert given == [(10, 1), *[(2, 1)] * 8, (1, 1)]


async def test_a_failure_in_the_middle_of_an_async_run_is_retried_then_the_run_goes_on(
    runs: list[int],
) -> None:
    app = make_app()
    calls: list[tuple[int, int]] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any, ctx: Context) -> None:
        calls.append((payload["seq"], ctx.attempt))
        if payload["seq"] == 4 and ctx.attempt == 1:
            raise RuntimeError("smtp is down")

    async with app:
        await publish(app, 10)
        async with running(app, middleware=FAST) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="10 handled")
        assert await committed(app, "g") == {0: 10}
    assert calls == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (4, 2)] + [
        (i, 1) for i in range(5, 10)
    ]
    assert worker.stats.failed_attempts == 1
    assert runs == [5, 5]  # the first run ended at the failed event, retried in its chain


async def test_an_async_run_member_that_keeps_failing_is_dead_lettered_as_published(
    runs: list[int],
) -> None:
    app = make_app()
    calls: list[tuple[int, int, Any, Any]] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any, ctx: Context) -> None:
        calls.append((payload["seq"], ctx.attempt, orjson.dumps(payload), ctx.event.data))
        if payload["seq"] == 4:
            payload["items"].append(ctx.attempt)  # changed, then given up on
            raise ValueError("never works")

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
    assert calls[5][2] == orjson.dumps({"seq": 4, "items": []})  # read afresh
    assert (entry.handler, entry.attempts, entry.reason) == (handle.__qualname__, 2, "failed")
    assert orjson.loads(entry.value)["data"] == {"seq": 4, "items": []}
    assert worker.stats.dead_lettered == 1
    assert runs == [5, 5]


async def test_in_a_sequenced_group_an_async_run_member_dead_lettered_parks_its_key(
    runs: list[int],
) -> None:
    app = make_app()
    app.group("g", sequenced=True)
    handled: list[tuple[str, int]] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any, ctx: Context) -> None:
        if (ctx.subject, payload["seq"]) == ("a", 1):
            raise ValueError("never works")
        handled.append((ctx.subject or "", payload["seq"]))

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


async def test_a_payload_not_matching_its_model_in_an_async_run_is_dead_lettered_at_once(
    runs: list[int],
) -> None:
    app = make_app()

    class Note(BaseModel):
        seq: int

    app.event("note.typed")(Note)
    seen: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Note) -> None:
        seen.append(payload.seq)

    async with app:
        for i in range(5):
            value = {"wrong": "shape"} if i == 2 else {"seq": i}
            await app.publish(TOPIC, value, type="note.typed", subject="k")
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 5, what="5 taken")
        log = await open_log(app.transport, "g")
        ((entry, _),) = log.listing()
    assert seen == [0, 1, 3, 4]
    assert (entry.offset, entry.reason, entry.attempts) == (2, "poison", 1)
    assert worker.stats.undecodable == 1
    assert worker.stats.failed_attempts == 0  # never retried
    assert runs == [3, 2]


async def test_a_stop_in_the_middle_of_an_async_run_commits_what_was_handled_and_no_more(
    runs: list[int],
) -> None:
    app = make_app()
    handled: list[int] = []
    gate = asyncio.Event()
    at_three = asyncio.Event()

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any) -> None:
        if payload["seq"] == 3 and not handled.count(3):
            at_three.set()
            await asyncio.wait_for(gate.wait(), BLOCK)
        handled.append(payload["seq"])

    async with app:
        await publish(app, 10)
        worker = Worker(app, commit_interval=60)  # only the final commit commits
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await eventually(at_three.is_set, what="the handler at event 3")
        stop.set()
        await eventually(lambda: all(r.stopping for r in worker._runners), what="stopping")
        gate.set()
        await asyncio.wait_for(task, 5)
        assert handled == [0, 1, 2, 3]
        assert await committed(app, "g") == {0: 4}

        async with running(app) as again:
            await eventually(lambda: again.stats.handled == 6, what="the rest")
    assert handled == list(range(10))  # each once


async def test_an_async_run_abandoned_at_shutdown_commits_what_it_finished(
    runs: list[int],
) -> None:
    app = make_app()
    handled: list[int] = []
    at_three = asyncio.Event()
    cancelled: list[int] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any) -> None:
        if payload["seq"] == 3:
            at_three.set()
            try:
                await asyncio.sleep(BLOCK)
            except asyncio.CancelledError:
                cancelled.append(3)
                raise
        handled.append(payload["seq"])

    async with app:
        await publish(app, 10)
        worker = Worker(app, commit_interval=60, shutdown_timeout=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await eventually(at_three.is_set, what="the handler at event 3")
        stop.set()
        await asyncio.wait_for(task, 5)  # gave up waiting for event 3
        assert worker.stats.abandoned == 1
        assert await committed(app, "g") == {0: 3}
    assert handled == [0, 1, 2]
    assert cancelled == [3]


async def test_a_revocation_in_the_middle_of_an_async_run_commits_what_the_run_handled(
    runs: list[int],
) -> None:
    app = make_app()
    handled: list[int] = []
    gate = asyncio.Event()
    at_three = asyncio.Event()

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any) -> None:
        if payload["seq"] == 3 and 3 not in handled:
            at_three.set()
            await asyncio.wait_for(gate.wait(), BLOCK)
        handled.append(payload["seq"])

    async with app:
        await publish(app, 10)
        worker = Worker(app, commit_interval=60)  # only the revocation's commit commits
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await eventually(at_three.is_set, what="the handler at event 3")
        (runner,) = worker._runners
        lane = runner.lanes[(TOPIC, 0)]
        consumer = runner.consumer
        revoking = asyncio.create_task(consumer.revoke(consumer.assignment()))
        await eventually(lambda: len(lane.queue) == 1, what="the waiting records dropped")
        gate.set()
        await asyncio.wait_for(revoking, 5)
        assert await committed(app, "g") == {0: len(handled)}
        stop.set()
        await asyncio.wait_for(task, 5)

        async with running(app):
            await publish(app, 1)
            await eventually(lambda: 0 in handled[10:], what="the next owner's event")
    assert handled == [*range(10), 0]  # each once, then the new one


async def test_async_handlers_in_runs_see_context_variables_and_publish_with_causation(
    runs: list[int],
) -> None:
    app = make_app()
    seen: list[tuple[Any, str, int, str]] = []

    @app.subscriber(TOPIC, group="g", types=["note.added"])
    async def handle(payload: Any, ctx: Context) -> None:
        seen.append((current_scope(), request_id.get(), payload["seq"], ctx.id))
        await ctx.publish(TOPIC, {"of": payload["seq"]}, type="note.seen", subject="k")

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
    ids = [event_id for _, _, _, event_id in seen]
    assert [seq for _, _, seq, _ in seen] == list(range(5))
    for scope, request, _, event_id in seen:
        assert scope is not None
        assert scope.causationid == event_id
        assert request == "req-1"
    assert sorted(replies) == [(i, ids[i], seen[i][0].correlationid) for i in range(5)]
    assert max(runs) > 1


async def test_async_handlers_behind_an_inbox_or_a_middleware_around_calls_go_one_by_one(
    runs: list[int], tmp_path: Path
) -> None:
    app = make_app()
    inbox = Inbox(f"sqlite:///{tmp_path / 'inbox.db'}")
    boxed: list[tuple[int, bool]] = []
    around: list[str] = []

    @app.subscriber(TOPIC, group="boxed", inbox=inbox)
    async def in_boxed(payload: Any, ctx: Context) -> None:
        boxed.append((payload["seq"], ctx.session is not None))

    @app.subscriber(TOPIC, group="plain")
    async def in_plain(payload: Any) -> None:
        around.append(f"call {payload['seq']}")

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


async def test_a_run_ends_where_def_and_async_handlers_take_turns(runs: list[int]) -> None:
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
