"""Middleware wraps every handler call, outermost first, and decides what counts as
handled (returning) or not (raising)."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from tidings import Tidings
from tidings.middleware import Delivery, Middleware, Next, compose, default_middleware
from tidings.testing import eventually, running


def _app() -> Tidings:
    return Tidings(f"memory://mw-{uuid.uuid4().hex}", service="test")


class Recording(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        self.log.append(f"{self.name}>")
        await call_next(delivery)
        self.log.append(f"<{self.name}")


async def test_compose_calls_the_first_middleware_outermost() -> None:
    log: list[str] = []

    async def innermost(delivery: Delivery) -> None:
        log.append("handler")

    chain = compose([Recording("a", log), Recording("b", log)], innermost)
    await chain(None)  # type: ignore[arg-type]
    assert log == ["a>", "b>", "handler", "<b", "<a"]


async def test_a_worker_runs_user_middleware_around_each_handler_call() -> None:
    app = _app()
    seen: list[tuple[str, str, int]] = []

    class Audit(Middleware):
        async def handle(self, delivery: Delivery, call_next: Next) -> None:
            await call_next(delivery)
            seen.append((delivery.group, delivery.event.type, delivery.attempt))

    @app.subscriber("t", group="g")
    async def handler(data: Any) -> None:
        return None

    async with app, running(app, middleware=[*default_middleware(), Audit()]):
        await app.publish("t", {"n": 1}, type="thing.happened")
        await eventually(lambda: len(seen) == 1)
    assert seen == [("g", "thing.happened", 1)]


async def test_a_middleware_that_swallows_an_error_lets_the_event_be_committed() -> None:
    app = _app()

    class Forgiving(Middleware):
        async def handle(self, delivery: Delivery, call_next: Next) -> None:
            with contextlib.suppress(RuntimeError):
                await call_next(delivery)

    @app.subscriber("t", group="g")
    async def handler(data: Any) -> None:
        raise RuntimeError("always")

    async with app, running(app, middleware=[Forgiving()]) as worker:
        await app.publish("t", {"n": 1}, type="thing.happened")
        await eventually(lambda: worker.stats.handled == 1)

        async def committed() -> bool:
            return sum(g.lag for g in await app.transport.groups()) == 0

        await eventually(committed, what="the commit")


async def test_an_error_past_the_middleware_keeps_the_event_and_the_worker_alive() -> None:
    app = _app()
    calls: list[int] = []

    @app.subscriber("t", group="g")
    async def handler(data: Any) -> None:
        calls.append(data["n"])
        if len(calls) == 1:
            raise RuntimeError("no Retry middleware to catch this")

    async with app, running(app, middleware=[]) as worker:
        await app.publish("t", {"n": 1}, type="thing.happened", subject="k")
        await app.publish("t", {"n": 2}, type="thing.happened", subject="k")
        await eventually(lambda: worker.stats.handled == 2, timeout=10)
    assert calls == [1, 1, 2]  # tried again, in order, and the lane went on
