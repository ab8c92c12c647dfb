"""A raw (unregistered) payload is the event's own data for its only handler, and a
copy only when someone else could see what a handler did to it: another handler of the
group, a later attempt, the dead letters (tests/test_worker_runs.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.test_worker_runs import FAST, TOPIC, make_app, publish
from tidings import Context
from tidings.testing import eventually, running


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_the_only_handler_of_an_event_gets_its_raw_payload_uncopied(kind: str) -> None:
    app = make_app()
    same: list[bool] = []

    def check(payload: Any, ctx: Context) -> None:
        same.append(payload is ctx.event.data)

    async def check_async(payload: Any, ctx: Context) -> None:
        check(payload, ctx)

    app.subscriber(TOPIC, group="g")(check if kind == "def" else check_async)
    async with app, running(app):
        await publish(app, 3)
        await eventually(lambda: len(same) == 3)
    assert same == [True, True, True]


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_a_handler_changing_a_raw_payload_does_not_change_it_for_the_next_handler(
    kind: str,
) -> None:
    app = make_app()
    second: list[tuple[Any, Any]] = []

    def first(payload: Any, ctx: Context) -> None:
        payload["items"].append("first")
        payload["seq"] = -1

    def then(payload: Any, ctx: Context) -> None:
        second.append((orjson.loads(orjson.dumps(payload)), ctx.event.data))

    async def first_async(payload: Any, ctx: Context) -> None:
        first(payload, ctx)

    async def then_async(payload: Any, ctx: Context) -> None:
        then(payload, ctx)

    app.subscriber(TOPIC, group="g")(first if kind == "def" else first_async)
    app.subscriber(TOPIC, group="g")(then if kind == "def" else then_async)
    async with app, running(app):
        await publish(app, 2)
        await eventually(lambda: len(second) == 2)
    assert second == [({"seq": i, "items": []}, {"seq": i, "items": []}) for i in range(2)]


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_each_attempt_gets_the_raw_payload_as_published(kind: str) -> None:
    app = make_app()
    attempts: list[tuple[int, Any, Any]] = []

    def flaky(payload: Any, ctx: Context) -> None:
        attempts.append((ctx.attempt, orjson.loads(orjson.dumps(payload)), ctx.event.data))
        payload["items"].append(ctx.attempt)
        payload["seq"] = -1
        if ctx.attempt < 3:
            raise RuntimeError("not yet")

    async def flaky_async(payload: Any, ctx: Context) -> None:
        flaky(payload, ctx)

    app.subscriber(TOPIC, group="g")(flaky if kind == "def" else flaky_async)
    async with app, running(app, middleware=FAST) as worker:
        await publish(app, 1)
        await eventually(lambda: worker.stats.handled == 1)
    assert [(a, p) for a, p, _ in attempts] == [(a, {"seq": 0, "items": []}) for a in (1, 2, 3)]
    # ctx.event is the attempt's own: what it shows is that attempt's change, no other's.
    assert [data for _, _, data in attempts] == [{"seq": -1, "items": [a]} for a in (1, 2, 3)]
