"""The inline engine's session (decision 0045): an ``async def`` handler's statements in
a SQLite batch run where they are awaited, with no greenlet, and behave as through
aiosqlite: rows, scalars, many parameter sets, driver errors, the session's connection,
streaming; a failing statement is rolled back alone, its batch-mates committed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio.session as async_session_module
from sqlalchemy.ext.asyncio.exc import AsyncMethodRequired

from tests.inbox.helpers import TOPIC, effect_rows, effects, effects_md, mark_rows, middleware
from tests.inbox.helpers import publish_one_key as publish
from tidings import Context, Tidings
from tidings.inbox import Inbox
from tidings.inbox._inline import InlineSession
from tidings.testing import eventually, running

unique_md = sa.MetaData()
keyed = sa.Table("keyed", unique_md, sa.Column("k", sa.String(64), primary_key=True))


@pytest.fixture
def inbox_and_engine(sqlite_url: str, closing: list[Any]) -> tuple[Inbox, sa.Engine]:
    """A batching Inbox on the SQLite file and a sync engine on it for the assertions."""
    inbox = Inbox(sqlite_url, batch=100)
    engine = sa.create_engine(sqlite_url)
    closing.extend([inbox, engine])
    return inbox, engine


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(url)
    effects_md.create_all(engine)
    unique_md.create_all(engine)
    engine.dispose()
    return url


async def test_an_inline_sessions_statements_need_no_greenlet(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = Inbox(sqlite_url)
    side = inbox._sides.inline()
    assert side is not None
    spawned: list[Any] = []
    real = async_session_module.greenlet_spawn

    async def counting(fn: Any, *args: Any, **kw: Any) -> Any:
        spawned.append(fn)
        return await real(fn, *args, **kw)

    monkeypatch.setattr(async_session_module, "greenlet_spawn", counting)
    try:
        async with side.engine.connect() as conn:
            await conn.begin()
            session = side.maker(bind=conn, join_transaction_mode="create_savepoint")
            assert isinstance(session, InlineSession)
            await session.execute(
                effects.insert(), [{"event_id": f"e{i}", "handler": "h"} for i in range(3)]
            )
            await session.execute(effects.insert().values(event_id="e3", handler="h"))
            rows = (
                await session.execute(sa.select(effects.c.event_id).order_by(effects.c.n))
            ).all()
            assert [r[0] for r in rows] == ["e0", "e1", "e2", "e3"]
            count = sa.select(sa.func.count()).select_from(effects)
            assert await session.scalar(count) == 4
            assert list(await session.scalars(sa.select(effects.c.event_id))) == [
                "e0",
                "e1",
                "e2",
                "e3",
            ]
            assert spawned == []  # none of these went through a greenlet
            # The session's connection and a streamed result still work (through one).
            assert (await (await session.connection()).execute(count)).scalar() == 4
            streamed = [r async for r in await session.stream(sa.select(effects.c.n))]
            with pytest.raises(AsyncMethodRequired):  # as AsyncSession says it
                await session.execute(count, execution_options={"stream_results": True})
            assert len(streamed) == 4
            await session.commit()
            await session.close()
            await conn.rollback()
    finally:
        await inbox.close()


async def test_a_driver_error_in_an_inline_session_is_sqlalchemys_and_rolls_back_alone(
    sqlite_url: str,
) -> None:
    inbox = Inbox(sqlite_url)
    side = inbox._sides.inline()
    assert side is not None
    try:
        async with side.engine.connect() as conn:
            await conn.begin()
            await conn.execute(keyed.insert().values(k="kept"))
            session = side.maker(bind=conn, join_transaction_mode="create_savepoint")
            await session.execute(keyed.insert().values(k="gone"))
            with pytest.raises(sa.exc.IntegrityError):
                await session.execute(keyed.insert().values(k="kept"))
            await session.close()  # rolls back to its savepoint: "gone" with it
            rows = (await conn.execute(sa.select(keyed.c.k))).all()
            assert [r[0] for r in rows] == ["kept"]
            await conn.rollback()
    finally:
        await inbox.close()


async def test_an_async_handler_whose_statement_fails_in_a_batch_loses_only_its_own(
    app: Tidings, inbox_and_engine: tuple[Inbox, sa.Engine]
) -> None:
    # The third event's second insert breaks a unique key (a driver error, raised
    # where the handler awaits it): its first insert and its mark are rolled back, the
    # events before and after it keep their effects, each once; Retry gives it again.
    inbox, engine = inbox_and_engine
    ids = await publish(app, 5)
    calls: list[str] = []

    @app.subscriber(TOPIC, group="g", inbox=inbox)
    async def write(payload: Any, ctx: Context) -> None:
        calls.append(ctx.id)
        await ctx.session.execute(effects.insert().values(event_id=ctx.id, handler="h"))
        if ctx.id == ids[2] and calls.count(ctx.id) == 1:
            await ctx.session.execute(keyed.insert().values(k="x"))
            await ctx.session.execute(keyed.insert().values(k="x"))

    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: worker.stats.handled == 5)
    assert worker.stats.failed_attempts == 1
    assert calls.count(ids[2]) == 2
    assert sorted(e for e, _ in effect_rows(engine)) == sorted(ids)  # each once
    assert len(mark_rows(engine, inbox)) == 5
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(keyed)).scalar() == 0


async def test_an_async_handler_cancelled_in_a_batch_leaves_nothing_half_done(
    app: Tidings, inbox_and_engine: tuple[Inbox, sa.Engine]
) -> None:
    # The third event's handler has written and then waits past the worker's stop:
    # it is cancelled there. Its batch (the events before it too) is given up; a second
    # worker handles all four events, each effect once, each with its mark.
    inbox, engine = inbox_and_engine
    ids = await publish(app, 4)
    hang = asyncio.Event()  # never set
    waiting = asyncio.Event()

    @app.subscriber(TOPIC, group="g", inbox=inbox)
    async def write(payload: Any, ctx: Context) -> None:
        await ctx.session.execute(effects.insert().values(event_id=ctx.id, handler="h"))
        if ctx.id == ids[2] and not hang.is_set() and not waiting.is_set():
            waiting.set()
            await hang.wait()

    async with running(app, middleware=middleware(), shutdown_timeout=0.05):
        await asyncio.wait_for(waiting.wait(), 30)
    assert len(mark_rows(engine, inbox)) + len(effect_rows(engine)) <= 4  # pairs, if any
    marked = {e for _, e in mark_rows(engine, inbox)}
    assert {e for e, _ in effect_rows(engine)} == marked  # no effect without its mark
    assert ids[2] not in marked
    async with running(app, middleware=middleware()) as worker:
        await eventually(lambda: len(mark_rows(engine, inbox)) == 4)
    assert worker.stats.failed_attempts == 0
    assert sorted(e for e, _ in effect_rows(engine)) == sorted(ids)  # each once
