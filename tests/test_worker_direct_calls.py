"""An async run calls the only handler of an unregistered payload, which takes no
context, with the event's data straight (decision 0047): the same order, retries, dead
letters, commits and causation as through ``_first_call`` (tests/test_worker_runs.py)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from tests.test_worker_runs import TOPIC, Runs, committed, make_app, publish, runs
from tidings import Context
from tidings.context import current_scope
from tidings.dead_letters import open_log
from tidings.middleware import Retry, default_middleware
from tidings.testing import eventually, running

__all__ = ["runs"]  # the fixture, used by name


async def test_a_handler_without_context_gets_each_event_in_order_and_commits(
    runs: Runs,
) -> None:
    app = make_app()
    seen: list[Any] = []

    @app.subscriber(TOPIC, group="g")
    async def note(payload: Any) -> None:
        seen.append(payload["seq"])

    async with app:
        await publish(app, 20)
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 20, what="20 handled")
        assert await committed(app, "g") == {0: 20}
    assert seen == list(range(20))
    assert sum(runs) == 20
    assert len(runs) < 20


async def test_a_handler_without_context_failing_mid_run_is_retried_then_dead_lettered(
    runs: Runs,
) -> None:
    app = make_app()
    calls: list[tuple[int, bytes]] = []

    @app.subscriber(TOPIC, group="g")
    async def flaky(payload: Any) -> None:
        calls.append((payload["seq"], orjson.dumps(payload)))
        if payload["seq"] == 4:
            payload["items"].append("changed")  # then given up on
            raise ValueError("never works")

    async with app:
        await publish(app, 10)
        slow = default_middleware(Retry(max_attempts=2, base_delay=0.01, max_delay=0.02))
        async with running(app, middleware=slow) as worker:
            await eventually(lambda: worker.stats.handled == 10, what="10 handled")
        assert await committed(app, "g") == {0: 10}
        log = await open_log(app.transport, "g")
        ((entry, _),) = log.listing()
    assert [seq for seq, _ in calls] == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9]
    # The second attempt got the event as published, not as the first one left it.
    assert calls[5][1] == orjson.dumps({"seq": 4, "items": []})
    assert (entry.handler, entry.attempts, entry.reason) == (flaky.__qualname__, 2, "failed")
    assert orjson.loads(entry.value)["data"] == {"seq": 4, "items": []}
    assert worker.stats.dead_lettered == 1
    assert worker.stats.failed_attempts == 2
    assert runs == [5, 5]  # the run ended at the failed event, the next took the rest


async def test_a_handler_without_context_publishes_with_the_events_causation(
    runs: Runs,
) -> None:
    app = make_app()
    scopes: list[Any] = []

    @app.subscriber(TOPIC, group="g", types=["note.added"])
    async def forward(payload: Any) -> None:
        scopes.append(current_scope())
        await app.publish(TOPIC, {"of": payload["seq"]}, type="note.seen", subject="k")

    replies: list[tuple[int, str | None, str | None]] = []

    @app.subscriber(TOPIC, group="h", types=["note.seen"])
    async def reply(payload: Any, ctx: Context) -> None:
        replies.append((payload["of"], ctx.event.causationid, ctx.event.correlationid))

    async with app:
        await publish(app, 5)
        async with running(app):
            await eventually(lambda: len(replies) == 5, what="5 replies")
        assert current_scope() is None  # the runs' scopes did not leak out
    assert all(scope is not None for scope in scopes)
    assert sorted(replies) == [
        (i, scopes[i].causationid, scopes[i].correlationid) for i in range(5)
    ]
    assert len({causation for _, causation, _ in replies}) == 5
    assert max(runs) > 1


class Note(BaseModel):
    seq: int
    items: list[Any]


async def test_a_handler_without_context_of_a_registered_type_gets_its_model() -> None:
    app = make_app()
    app.registry.register(Note, "note.added")
    got: list[Any] = []

    @app.subscriber(TOPIC, group="g")
    async def note(payload: Any) -> None:
        got.append(payload)

    async with app:
        await publish(app, 3)
        async with running(app):
            await eventually(lambda: len(got) == 3, what="3 handled")
    assert got == [Note(seq=i, items=[]) for i in range(3)]
