"""A plain def handler's calls in a lane's batch, a run of them in one thread (decision
0041): the claims, savepoints and releases in that thread, per event, so that an event
whose call fails is rolled back alone and goes on to Retry (and the dead letters:
``test_batches``) while the events before it keep their effects and marks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.inbox.helpers import (
    TOPIC,
    add_effect,
    effect_rows,
    mark_rows,
    middleware,
    publish_one_key,
    subscribe_writer,
)
from tidings import Context, Tidings
from tidings.inbox import Inbox, _batch
from tidings.testing import eventually, running
from tidings.worker import dispatch


@pytest.fixture
async def inbox(db_url: str) -> AsyncIterator[Inbox]:
    box = Inbox(db_url, batch=100)
    box.create_table()
    yield box
    await box.close()


async def test_a_lanes_calls_run_in_threads_each_effect_with_its_mark(
    app: Tidings, inbox: Inbox, engine: sa.Engine, runs: list[list[str]]
) -> None:
    ids = await publish_one_key(app, 40)  # all there before the worker fetches

    @app.subscriber(TOPIC, group="g", inbox=inbox)
    def write(payload: Any, ctx: Context) -> None:
        add_effect(ctx.session, ctx)

    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: len(mark_rows(engine, inbox)) == 40)
    assert worker.stats.handled == 40
    assert sorted(e for e, _ in effect_rows(engine)) == sorted(ids)
    # Every event was offered to a run, in order, and runs held several.
    assert {e for run in runs for e in run} == set(ids)
    for run in runs:
        first = ids.index(run[0])
        assert run == ids[first : first + len(run)]
    assert max(len(run) for run in runs) > 1, runs


async def test_an_event_failing_in_a_run_is_rolled_back_alone_and_retried(
    app: Tidings,
    inbox: Inbox,
    engine: sa.Engine,
    runs: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Runs and batches cut by their time only after a minute: on a busy machine the
    # failing event would otherwise perhaps begin a run of its own.
    monkeypatch.setattr(dispatch, "RUN_SECONDS", 60.0)
    monkeypatch.setattr(_batch, "BATCH_SECONDS", 60.0)
    ids = await publish_one_key(app, 12)
    committed_at_retry: list[int] = []

    @app.subscriber(TOPIC, group="g", inbox=inbox)
    def write_then_fail_once(payload: Any, ctx: Context) -> None:
        add_effect(ctx.session, ctx)  # written, then undone by the failure
        if ctx.id == ids[5]:
            if ctx.attempt == 1:
                raise RuntimeError("the sixth fails once, after its write")
            committed_at_retry.append(len(mark_rows(engine, inbox)))

    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: len(mark_rows(engine, inbox)) == 12)
    assert worker.stats.failed_attempts == 1
    # The failing call was made in a run, after batch-mates of that run, and the events
    # before it were committed, and kept, before Retry called it again.
    assert any(ids[5] in run and run.index(ids[5]) > 0 for run in runs), runs
    assert committed_at_retry == [5]
    # Each event's effect once: the failed attempt's write left nothing.
    assert sorted(e for e, _ in effect_rows(engine)) == sorted(ids)


async def test_events_marked_before_are_passed_in_a_run_without_a_call(
    app: Tidings, inbox: Inbox, engine: sa.Engine, runs: list[list[str]]
) -> None:
    ids = await publish_one_key(app, 10)
    called: list[str] = []
    subscribe_writer(app, inbox, "sync", called)
    consumer = inbox.key(app.subscribers[0])
    handled_before = ids[2:5]  # as if a process had handled them and died
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            inbox.table.insert(),
            [{"consumer": consumer, "event_id": e, "handled_at": now} for e in handled_before],
        )
    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: worker.stats.handled == 10)
        await eventually(lambda: len(mark_rows(engine, inbox)) == 10)
    assert worker.stats.duplicates == 3
    assert called == [e for e in ids if e not in handled_before]
    assert any(set(handled_before) & set(run) for run in runs), runs
    assert sorted(e for e, _ in effect_rows(engine)) == sorted(called)
