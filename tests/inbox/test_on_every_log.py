"""The inbox through a real worker, on every log: a redelivered event has no second
effect, with SQLite and PostgreSQL, sync and async handlers, on the SQLite log, and on
Kafka and NATS for two of the four pairs."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import LOGS
from tests.inbox.helpers import (
    PARTITIONS,
    TOPIC,
    add_effect,
    effect_rows,
    mark_rows,
    middleware,
    subscribe_writer,
)
from tidings import Context, Tidings
from tidings.inbox import Inbox
from tidings.testing import eventually, running


def _across_logs() -> list[Any]:
    """Every database with every kind of handler on the SQLite log; on Kafka and NATS,
    two of the four (SQLite with sync handlers, PostgreSQL with async ones): the log
    and the database meet only in what is delivered again, and each pair takes a broker
    and 6-12 s there."""
    combos: list[Any] = [
        ("sqlite", db, kind) for db in ("sqlite", "postgres") for kind in ("sync", "async")
    ]
    for log in LOGS[1:]:
        for db, kind in (("sqlite", "sync"), ("postgres", "async")):
            combos.append(pytest.param(*log.values, db, kind, marks=log.marks))
    return combos


# The inbox works the same on every log: these tests run on Kafka (Tansu) and NATS too.
ON_EVERY_LOG = pytest.mark.parametrize(
    ("app", "db_url", "kind"), _across_logs(), indirect=["app", "db_url"]
)


@ON_EVERY_LOG
async def test_an_event_published_twice_has_one_effect(
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
) -> None:
    inbox = Inbox(db_url)
    closing.append(inbox)
    calls: list[str] = []
    subscribe_writer(app, inbox, kind, calls)
    events = [app.build({"n": i}, type="task.created", subject=f"t{i}") for i in range(20)]
    # NATS drops a repeated publish itself (Nats-Msg-Id, within the stream's duplicate
    # window): the inbox sees the repeats only where the log stores them.
    stored = 20 if app.transport.url.startswith("nats://") else 40
    async with running(app, middleware=middleware()) as worker:
        await app.publish_events(TOPIC, [e for event in events for e in (event, event)])
        await eventually(lambda: worker.stats.handled == stored, what=f"{stored} deliveries")
    assert worker.stats.duplicates == stored - 20
    assert sorted(calls) == sorted(e.id for e in events)
    rows = effect_rows(engine)
    assert sorted(event_id for event_id, _ in rows) == sorted(e.id for e in events)
    assert len(mark_rows(engine, inbox)) == 20


@ON_EVERY_LOG
async def test_a_redelivery_after_a_restart_has_no_second_effect(
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
) -> None:
    inbox = Inbox(db_url)
    closing.append(inbox)
    calls: list[str] = []
    subscribe_writer(app, inbox, kind, calls)
    sent = await app.publish_many(
        TOPIC, [{"n": i} for i in range(30)], type="task.created", subject="same-key"
    )
    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: worker.stats.handled == 30)
    assert worker.stats.duplicates == 0
    # As if the worker had died before committing its offsets: everything comes again.
    await app.transport.set_offsets("g", TOPIC, dict.fromkeys(range(PARTITIONS), 0))
    async with running(app, middleware=middleware()) as again:
        await eventually(lambda: again.stats.handled == 30)
    assert again.stats.duplicates == 30
    assert sorted(calls) == sorted(e.id for e in sent)
    assert len(effect_rows(engine)) == 30


@ON_EVERY_LOG
async def test_a_failing_attempt_is_rolled_back_and_the_retry_succeeds_once(
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
) -> None:
    inbox = Inbox(db_url)
    closing.append(inbox)
    seen_before: list[tuple[int, int, int]] = []  # (attempt, effects, marks) at its start

    def look(ctx: Context) -> None:
        seen_before.append((ctx.attempt, len(effect_rows(engine)), len(mark_rows(engine, inbox))))

    if kind == "sync":

        @app.subscriber(TOPIC, group="g", inbox=inbox)
        def flaky(payload: Any, ctx: Context) -> None:
            look(ctx)
            add_effect(ctx.session, ctx)  # written, then undone by the failure
            if ctx.attempt < 3:
                raise RuntimeError("the mail server is down")

    else:

        @app.subscriber(TOPIC, group="g", inbox=inbox)
        async def flaky_async(payload: Any, ctx: Context) -> None:
            look(ctx)
            await add_effect(ctx.session, ctx)
            if ctx.attempt < 3:
                raise RuntimeError("the mail server is down")

    event = await app.publish(TOPIC, {}, type="task.created")
    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: worker.stats.handled == 1)
    assert worker.stats.failed_attempts == 2
    assert seen_before == [(1, 0, 0), (2, 0, 0), (3, 0, 0)]  # nothing left by a failure
    assert effect_rows(engine) == [(event.id, "h")]
    assert mark_rows(engine, inbox) == [(inbox.key(app.subscribers[0]), event.id)]
