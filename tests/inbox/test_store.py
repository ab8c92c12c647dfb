"""One test case for inbox stores, run on each dialect (as the eventsourcing library
runs one recorder test case per adapter): :class:`InboxStoreCases` holds what every
store must do, on a real SQLite file and a real PostgreSQL; the subclasses give the
database and add what only their dialect has."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from tests.inbox.helpers import (
    PARTITIONS,
    TOPIC,
    an_event,
    async_url,
    delivery,
    effect_rows,
    effects,
    effects_md,
    mark_rows,
    middleware,
    old_marks,
    subscribe_writer,
    subscriber,
    writer,
)
from tidings import ConfigError, Context, Tidings
from tidings.inbox import Inbox
from tidings.inbox._retention import SWEEP_BATCH
from tidings.middleware import Delivery, Stats
from tidings.middleware.inbox import InboxMiddleware
from tidings.testing import eventually, running


class InboxStoreCases:
    """What every inbox store does. Not collected itself (no ``Test`` prefix): each
    subclass gives ``db_url``, the database of the effects and the marks."""

    # PostgreSQL takes the mark before the handler runs: a concurrent delivery of the
    # same event in another process waits on it and never runs its handler.
    claims_first: bool

    @pytest.fixture
    def db_url(self) -> str:
        raise NotImplementedError

    async def test_every_handler_of_a_group_handles_the_event_once(
        self, app: Tidings, db_url: str, closing: list[Any]
    ) -> None:
        inbox = Inbox(db_url)
        closing.append(inbox)
        calls: list[str] = []

        @app.subscriber(TOPIC, group="g", inbox=inbox)
        def first(payload: Any) -> None:
            calls.append("first")

        @app.subscriber(TOPIC, group="g", inbox=inbox)
        async def second(payload: Any) -> None:
            calls.append("second")

        event = app.build({}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, [event, event, event])
            await eventually(lambda: worker.stats.handled == 3)
        assert sorted(calls) == ["first", "second"]
        assert worker.stats.duplicates == 4
        assert inbox.key(app.subscribers[0]) == (
            "g:tests.inbox.test_store.InboxStoreCases."
            "test_every_handler_of_a_group_handles_the_event_once.<locals>.first"
        )

    @pytest.mark.parametrize("given", ["url", "async_engine"])
    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_a_handler_without_a_database_uses_the_inbox_as_an_id_store(
        self, app: Tidings, db_url: str, closing: list[Any], kind: str, given: str
    ) -> None:
        if given == "url":
            inbox = Inbox(db_url, retention=timedelta(hours=1))
        else:
            async_engine = create_async_engine(async_url(db_url))
            closing.append(async_engine)
            inbox = Inbox(async_engine, retention=timedelta(hours=1))
        closing.append(inbox)
        sent: list[str] = []

        if kind == "sync":

            @app.subscriber(TOPIC, group="email", inbox=inbox)
            def send(payload: dict[str, Any]) -> None:
                sent.append(payload["to"])

        else:

            @app.subscriber(TOPIC, group="email", inbox=inbox)
            async def send_async(payload: dict[str, Any]) -> None:
                sent.append(payload["to"])

        events = [app.build({"to": f"u{i}@example.com"}, type="task.created") for i in range(5)]
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, events + events)
            await eventually(lambda: worker.stats.handled == 10)
        await app.transport.set_offsets("email", TOPIC, dict.fromkeys(range(PARTITIONS), 0))
        async with running(app, middleware=middleware()) as again:
            await eventually(lambda: again.stats.handled == 10)
        assert sorted(sent) == sorted(e.data["to"] for e in events)
        assert worker.stats.duplicates == 5
        assert again.stats.duplicates == 10

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_a_failing_handler_without_a_session_leaves_no_mark_and_no_connection(
        self, app: Tidings, engine: sa.Engine, closing: list[Any], kind: str
    ) -> None:
        inbox = Inbox(engine)
        closing.append(inbox)
        calls: list[int] = []

        def once(payload: Any) -> None:
            calls.append(len(calls))
            if len(calls) == 1:
                raise RuntimeError("the webhook timed out")

        if kind == "sync":
            app.subscriber(TOPIC, group="g", inbox=inbox)(once)
        else:

            @app.subscriber(TOPIC, group="g", inbox=inbox)
            async def once_async(payload: Any) -> None:
                once(payload)

        await app.publish(TOPIC, {}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await eventually(lambda: worker.stats.handled == 1)
        assert calls == [0, 1]
        assert len(mark_rows(engine, inbox)) == 1
        await inbox.close()
        assert engine.pool.checkedout() == 0

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_a_handler_that_leaves_its_session_unused_is_marked_all_the_same(
        self, app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
    ) -> None:
        inbox = Inbox(db_url)
        closing.append(inbox)
        calls: list[str] = []

        if kind == "sync":

            @app.subscriber(TOPIC, group="g", inbox=inbox)
            def notify(payload: Any, ctx: Context) -> None:
                calls.append(ctx.id)

        else:

            @app.subscriber(TOPIC, group="g", inbox=inbox)
            async def notify_async(payload: Any, ctx: Context) -> None:
                calls.append(ctx.id)

        event = app.build({}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, [event, event])
            await eventually(lambda: worker.stats.handled == 2)
        assert calls == [event.id]
        assert mark_rows(engine, inbox) == [(inbox.key(app.subscribers[0]), event.id)]

    async def test_the_same_inbox_serves_sync_and_async_handlers_with_their_own_sessions(
        self, app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any]
    ) -> None:
        inbox = Inbox(db_url)
        closing.append(inbox)
        calls: list[str] = []
        subscribe_writer(app, inbox, "sync", calls, group="a")
        subscribe_writer(app, inbox, "async", calls, group="b")
        event = app.build({}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, [event, event])
            await eventually(lambda: worker.stats.handled == 4)
        assert calls == [event.id, event.id]
        assert len(effect_rows(engine)) == 2
        assert {c.split(":")[0] for c, _ in mark_rows(engine, inbox)} == {"a", "b"}

    @pytest.mark.parametrize("given", ["engine", "sessionmaker"])
    async def test_an_inbox_on_your_engine_gives_sync_handlers_its_sessions(
        self, app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], given: str
    ) -> None:
        inbox = Inbox(engine if given == "engine" else sessionmaker(engine))
        closing.append(inbox)
        calls: list[str] = []
        subscribe_writer(app, inbox, "sync", calls)
        event = app.build({}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, [event, event])
            await eventually(lambda: worker.stats.handled == 2)
        assert calls == [event.id]
        assert len(effect_rows(engine)) == 1
        await inbox.close()
        assert engine.pool.checkedout() == 0  # yours, and every connection given back

    @pytest.mark.parametrize("given", ["engine", "sessionmaker"])
    async def test_an_inbox_on_your_async_engine_gives_async_handlers_its_sessions(
        self, app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], given: str
    ) -> None:
        async_engine = create_async_engine(async_url(db_url))
        closing.append(async_engine)
        inbox = Inbox(async_engine if given == "engine" else async_sessionmaker(async_engine))
        closing.append(inbox)
        calls: list[str] = []
        subscribe_writer(app, inbox, "async", calls)
        event = app.build({}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, [event, event])
            await eventually(lambda: worker.stats.handled == 2)
        assert calls == [event.id]
        assert len(effect_rows(engine)) == 1

    @pytest.mark.parametrize("uses_session", [True, False])
    async def test_async_drivers_without_a_direct_path_go_through_sqlalchemy(
        self, app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], uses_session: bool
    ) -> None:
        # As with asyncpg: the mark statements go through exec_driver_sql.
        async_engine = create_async_engine(async_url(db_url))
        closing.append(async_engine)
        inbox = Inbox(async_engine)
        closing.append(inbox)
        sides = inbox._sides
        assert sides._async is not None
        assert sides._async.driver in ("aiosqlite", "psycopg")
        sides._async = dataclasses.replace(sides._async, driver="")
        calls: list[str] = []
        if uses_session:
            subscribe_writer(app, inbox, "async", calls)
        else:

            @app.subscriber(TOPIC, group="g", inbox=inbox)
            async def plain(payload: Any) -> None:
                calls.append("x")

        events = [app.build({}, type="task.created") for _ in range(3)]
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, events + events)
            await eventually(lambda: worker.stats.handled == 6)
        assert len(calls) == 3
        assert worker.stats.duplicates == 3
        assert len(mark_rows(engine, inbox)) == 3
        assert len(effect_rows(engine)) == (3 if uses_session else 0)

    async def test_a_handler_of_the_other_kind_is_deduplicated_without_a_session(
        self, app: Tidings, db_url: str, closing: list[Any]
    ) -> None:
        eng = sa.create_engine(db_url)
        closing.append(eng)
        inbox = Inbox(eng)  # sync only
        closing.append(inbox)
        calls: list[str] = []
        errors: list[str] = []

        @app.subscriber(TOPIC, group="g", inbox=inbox)
        async def notify(payload: Any, ctx: Context) -> None:
            calls.append(ctx.id)
            assert not ctx.session
            try:
                ctx.session.add(object())
            except ConfigError as exc:
                errors.append(str(exc))

        event = app.build({}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await app.publish_events(TOPIC, [event, event])
            await eventually(lambda: worker.stats.handled == 2)
        # eng is disposed of by `closing` after the inbox is closed: its background
        # sweep may still be deleting on one of eng's connections, which would go back
        # to a disposed pool and stay open (psycopg's ResourceWarning, in a later test).
        assert calls == [event.id]
        assert worker.stats.duplicates == 1
        assert len(errors) == 1
        assert "async def handler" in errors[0]
        assert "only a sync Engine" in errors[0]

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_concurrent_deliveries_of_one_event_have_one_effect(
        self, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
    ) -> None:
        inbox = Inbox(db_url)
        closing.append(inbox)
        calls: list[str] = []
        stats = Stats()
        sub = subscriber(inbox, lambda p, c: None, is_async=kind == "async")
        event = an_event()
        mw = InboxMiddleware()
        call_next = writer(kind, calls, 0.1)
        await asyncio.gather(*(mw.handle(delivery(sub, event, stats), call_next) for _ in range(2)))
        assert calls == [event.id]  # the second waited for the first, then found its mark
        assert stats.duplicates == 1
        assert len(effect_rows(engine)) == 1

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_two_processes_racing_on_one_event_commit_one_effect(
        self, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
    ) -> None:
        # Two Inbox objects with their own engines: as two worker processes would be.
        first, second = Inbox(db_url), Inbox(db_url)
        closing += [first, second]
        await first.create_table_async()
        calls: list[str] = []
        stats = Stats()
        event = an_event()

        def handler(p: Any, c: Any) -> None: ...

        call_next = writer(kind, calls, 0.2)
        await asyncio.gather(
            *(
                InboxMiddleware().handle(
                    delivery(subscriber(inbox, handler, is_async=kind == "async"), event, stats),
                    call_next,
                )
                for inbox in (first, second)
            )
        )
        assert len(effect_rows(engine)) == 1
        assert stats.duplicates == 1
        assert len(mark_rows(engine, first)) == 1
        if self.claims_first:
            # The first's mark holds a row lock: the second waits, finds it, never runs.
            assert calls == [event.id]
        else:
            # SQLite: both may run; the second's transaction, effect and all, is undone.
            assert calls in ([event.id], [event.id, event.id])

    async def test_a_cancelled_delivery_leaves_no_mark_and_gives_its_connection_back(
        self, db_url: str, closing: list[Any]
    ) -> None:
        eng = sa.create_engine(db_url)
        closing.append(eng)
        effects_md.create_all(eng)
        inbox = Inbox(eng)
        closing.append(inbox)
        started = threading.Event()

        async def call_next(d: Delivery) -> None:
            await asyncio.to_thread(
                d.session.execute, effects.insert().values(event_id=d.event.id, handler="h")
            )
            started.set()
            await asyncio.sleep(30)

        d = delivery(subscriber(inbox, lambda p, c: None, is_async=False), an_event(), Stats())
        task = asyncio.create_task(InboxMiddleware().handle(d, call_next))
        await eventually(started.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: eng.pool.checkedout() == 0, what="the connection back")
        assert effect_rows(eng) == []
        assert mark_rows(eng, inbox) == []
        assert d.session is None
        eng.dispose()

    async def test_two_handlers_with_one_name_in_a_group_are_refused(
        self, db_url: str, closing: list[Any]
    ) -> None:
        inbox = Inbox(db_url)
        closing.append(inbox)

        def make() -> Callable[..., Any]:
            async def handler(payload: Any) -> None: ...

            return handler

        async def call_next(d: Delivery) -> None: ...

        mw = InboxMiddleware()
        await mw.handle(delivery(subscriber(inbox, make()), an_event(), Stats()), call_next)
        with pytest.raises(ConfigError, match="share the inbox key"):
            await mw.handle(delivery(subscriber(inbox, make()), an_event(), Stats()), call_next)
        # In another group the same name is another key.
        await mw.handle(
            delivery(subscriber(inbox, make(), group="h"), an_event(), Stats()), call_next
        )

    async def test_sweep_deletes_the_marks_older_than_the_retention(
        self, db_url: str, engine: sa.Engine, closing: list[Any]
    ) -> None:
        inbox = Inbox(db_url, retention=timedelta(days=7))
        closing.append(inbox)
        inbox.create_table()
        old = [timedelta(days=8)] * (SWEEP_BATCH + 7)  # more than one batch
        old_marks(engine, inbox, "g:x.h", [*old, timedelta(days=6), timedelta(minutes=1)])
        assert await inbox.sweep() == SWEEP_BATCH + 7
        assert len(mark_rows(engine, inbox)) == 2
        assert await inbox.sweep() == 0
        assert await Inbox(db_url, retention=None).sweep() == 0  # keeps them all

    async def test_old_marks_are_swept_in_the_background_and_then_their_event_is_new(
        self, app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any]
    ) -> None:
        inbox = Inbox(db_url, retention=timedelta(days=1))
        closing.append(inbox)
        sweeps = 0
        sweep = inbox.sweep

        async def counted_sweep(now: datetime | None = None) -> int:
            nonlocal sweeps
            sweeps += 1
            return await sweep(now)

        inbox.sweep = counted_sweep  # type: ignore[method-assign]
        calls: list[str] = []
        subscribe_writer(app, inbox, "async", calls)
        consumer = inbox.key(app.subscribers[0])
        inbox.create_table()
        old_event = app.build({}, type="task.created")
        old_marks(engine, inbox, consumer, [timedelta(days=2)])  # handled long ago as "e0"
        with engine.begin() as conn:
            conn.execute(inbox.table.update().values(event_id=old_event.id))
        async with running(app, middleware=middleware()) as worker:
            await app.publish_many(TOPIC, [{"n": i} for i in range(50)], type="task.created")
            await eventually(lambda: worker.stats.handled == 50)
            await eventually(lambda: (consumer, old_event.id) not in mark_rows(engine, inbox))
            # Redelivered after its mark was deleted: handled again.
            await app.publish_events(TOPIC, [old_event])
            await eventually(lambda: worker.stats.handled == 51)
        assert old_event.id in calls
        assert worker.stats.duplicates == 0
        assert sweeps == 1  # once at the start, not per event (next one: in 5 minutes)

    async def test_create_table_and_metadata_for_alembic(
        self, db_url: str, closing: list[Any]
    ) -> None:
        metadata = sa.MetaData()
        url = db_url
        inbox = Inbox(url, table="handled", metadata=metadata)
        closing.append(inbox)
        assert metadata.tables["handled"] is inbox.table
        assert [c.name for c in inbox.table.primary_key] == ["consumer", "event_id"]
        inbox.create_table()
        inbox.create_table()  # again: nothing to do
        eng = sa.create_engine(url)
        try:
            assert sa.inspect(eng).has_table("handled")
            assert [ix["column_names"] for ix in sa.inspect(eng).get_indexes("handled")] == [
                ["handled_at"]
            ]
        finally:
            eng.dispose()
        sa.Table("other", metadata, sa.Column("x", sa.Integer))
        with pytest.raises(ConfigError, match="not an inbox"):
            Inbox(url, table="other", metadata=metadata)

    async def test_create_table_with_an_async_engine_is_awaited(
        self, db_url: str, closing: list[Any]
    ) -> None:
        async_engine = create_async_engine(async_url(db_url))
        closing.append(async_engine)
        inbox = Inbox(async_engine)
        with pytest.raises(ConfigError, match="create_table_async"):
            inbox.create_table()
        await inbox.create_table_async()
        async with async_engine.connect() as conn:
            assert await conn.run_sync(lambda c: sa.inspect(c).has_table("tidings_inbox"))


class TestSQLiteInbox(InboxStoreCases):
    claims_first = False

    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'app.db'}"

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_a_new_sqlite_inbox_waits_for_another_processes_write(
        self, tmp_path: Path, kind: str
    ) -> None:
        # SQLite answers the switch of a new file to WAL "database is locked" at once, not
        # after its busy timeout, while another connection writes (tidings/_sqlite.py): as
        # when the processes of one service open a new inbox file together.
        path = tmp_path / "inbox.db"
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        inbox = Inbox(f"sqlite:///{path}" if kind == "sync" else f"sqlite+aiosqlite:///{path}")
        try:
            started = time.monotonic()
            if kind == "sync":
                await asyncio.to_thread(inbox.create_table)
            else:
                await inbox.create_table_async()
            assert time.monotonic() - started >= 0.25  # it waited for the lock
            assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            release.cancel()
            other.close()
            await inbox.close()

    async def test_a_new_sqlite_inbox_locked_past_its_timeout_says_so(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("tidings.inbox._sides.SQLITE_TIMEOUT", 0.2)
        path = tmp_path / "inbox.db"
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        inbox = Inbox(f"sqlite+aiosqlite:///{path}")
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                await inbox.create_table_async()
            other.execute("ROLLBACK")
            await inbox.create_table_async()  # nothing was left half-done
        finally:
            other.close()
            await inbox.close()

    async def test_a_mark_that_cannot_be_written_fails_the_delivery_for_retry(
        self, app: Tidings, tmp_path: Path, closing: list[Any]
    ) -> None:
        # The marks of events handled one by one (batch=1): tests/inbox/test_batches.py
        # has a batch whose commit fails.
        inbox = Inbox(f"sqlite:///{tmp_path / 'ids.db'}", batch=1)
        closing.append(inbox)
        write_marks = inbox._store._write_marks  # type: ignore[attr-defined]
        failures = [RuntimeError("disk I/O error")]

        def flaky_write(*args: Any) -> list[bool]:
            if failures:
                raise failures.pop()
            return write_marks(*args)

        inbox._store._write_marks = flaky_write  # type: ignore[attr-defined]
        sent: list[str] = []

        @app.subscriber(TOPIC, group="email", inbox=inbox)
        async def send(payload: Any, ctx: Context) -> None:
            sent.append(ctx.id)

        event = await app.publish(TOPIC, {}, type="task.created")
        async with running(app, middleware=middleware()) as worker:
            await eventually(lambda: worker.stats.handled == 1)
        # Without a database the effect cannot be undone: the retry repeats it, once.
        assert sent == [event.id, event.id]
        assert worker.stats.failed_attempts == 1


class TestPostgreSQLInbox(InboxStoreCases):
    claims_first = True

    @pytest.fixture
    def db_url(self, pg_url: str) -> str:
        return pg_url

    async def test_closing_after_a_cancelled_delivery_waits_for_its_connection_to_close(
        self, db_url: str
    ) -> None:
        # A cancelled delivery leaves closing its session to a thread (the task does not
        # wait); Inbox.close must not dispose of the engine before that close is done:
        # the connection would go back to the disposed pool and stay open until the
        # garbage collector found it (psycopg's ResourceWarning, in some later test).
        inbox = Inbox(db_url, batch=1)
        inbox.create_table()

        def slow_rollback(conn: Any) -> None:
            if threading.current_thread().name.startswith("tidings-inbox"):
                time.sleep(0.3)  # the session's ROLLBACK, on a busy machine

        given_back = threading.Event()

        def checkin(dbapi_connection: Any, record: Any) -> None:
            if threading.current_thread().name.startswith("tidings-inbox"):
                given_back.set()

        started = asyncio.Event()

        async def call_next(d: Delivery) -> None:
            started.set()
            await asyncio.sleep(30)

        sa.event.listen(sa.Engine, "rollback", slow_rollback)
        sa.event.listen(sa.pool.Pool, "checkin", checkin)
        try:
            d = delivery(subscriber(inbox, lambda p, c: None, is_async=False), an_event(), Stats())
            task = asyncio.create_task(InboxMiddleware().handle(d, call_next))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await inbox.close()
            assert await asyncio.to_thread(given_back.wait, 10)
        finally:
            sa.event.remove(sa.Engine, "rollback", slow_rollback)
            sa.event.remove(sa.pool.Pool, "checkin", checkin)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == []

    async def test_marks_can_live_in_a_postgresql_schema(
        self, pg_url: str, closing: list[Any]
    ) -> None:
        eng = sa.create_engine(pg_url)
        closing.append(eng)
        with eng.begin() as conn:
            conn.execute(sa.text('CREATE SCHEMA "Events"'))
        inbox = Inbox(pg_url, schema="Events", table="Handled")
        closing.append(inbox)
        calls: list[str] = []

        async def call_next(d: Delivery) -> None:
            calls.append(d.event.id)

        event = an_event()
        sub = subscriber(inbox, lambda p, c: None)
        for _ in range(2):
            await InboxMiddleware().handle(delivery(sub, event, Stats()), call_next)
        assert calls == [event.id]
        with eng.connect() as conn:
            assert conn.execute(sa.text('SELECT count(*) FROM "Events"."Handled"')).scalar() == 1
        eng.dispose()
