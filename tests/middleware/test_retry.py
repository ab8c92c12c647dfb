"""Retry: in place, growing waits with a cap and jitter, never for undecodable payloads,
and ended by a stopping worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from tidings import ConfigError, Context, Tidings
from tidings.middleware import Retry, default_middleware
from tidings.testing import eventually, running


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    retry = Retry(base_delay=0.1, max_delay=1.0, jitter=0)
    assert [retry.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert retry.delay(10_000) == 1.0  # no overflow on a long outage


def test_jitter_shortens_each_wait_by_at_most_its_share() -> None:
    retry = Retry(base_delay=1.0, max_delay=1.0, jitter=0.5)
    delays = [retry.delay(1) for _ in range(500)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.3  # they really differ


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_delay": 0}, "base_delay"),
        ({"base_delay": 2, "max_delay": 1}, "max_delay"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Retry(**kwargs)


async def test_a_failing_handler_is_called_again_with_the_attempt_number() -> None:
    app = Tidings(f"memory://retry-{uuid.uuid4().hex}", service="test")
    attempts: list[int] = []

    @app.subscriber("t", group="g")
    async def flaky(data: Any, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("not yet")

    fast = default_middleware(Retry(base_delay=0.01, max_delay=0.01))
    async with app, running(app, middleware=fast) as worker:
        await app.publish("t", {}, type="thing.happened")
        await eventually(lambda: worker.stats.handled == 1)
    assert attempts == [1, 2, 3]
    assert worker.stats.failed_attempts == 2


async def test_an_undecodable_payload_is_not_retried() -> None:
    app = Tidings(f"memory://retry-{uuid.uuid4().hex}", service="test")

    @app.event("thing.happened")
    class Thing(BaseModel):
        n: int

    calls: list[Any] = []

    @app.subscriber("t", group="g")
    async def handler(thing: Thing) -> None:
        calls.append(thing)

    async with app, running(app) as worker:
        # check=False: the poison a producer without the model could write (decision 0052)
        await app.publish("t", {"n": "not a number"}, type="thing.happened", check=False)
        await app.publish("t", Thing(n=1))
        await eventually(lambda: len(calls) == 1)
    assert worker.stats.undecodable == 1
    assert worker.stats.failed_attempts == 0


async def test_stopping_ends_a_long_wait_and_leaves_the_event_uncommitted() -> None:
    app = Tidings(f"memory://retry-{uuid.uuid4().hex}", service="test")

    @app.subscriber("t", group="g")
    async def broken(data: Any) -> None:
        raise RuntimeError("down")

    slow = default_middleware(Retry(base_delay=60, max_delay=60))
    async with app:
        await app.publish("t", {}, type="thing.happened")
        started = time.monotonic()
        async with running(app, middleware=slow) as worker:
            await eventually(lambda: worker.stats.failed_attempts == 1)
        assert time.monotonic() - started < 5  # not the 60 s wait
        [group] = await app.transport.groups()
        assert group.lag == 1
