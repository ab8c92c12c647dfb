"""The inbox: a redelivered event has no second effect, on a real SQLite file and a real
PostgreSQL, with sync and async sessions, through a real worker on a SQLite log."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import LOGS, log_url
from tidings import ConfigError, Context, Event, Tidings
from tidings.inbox import SWEEP_BATCH, Inbox
from tidings.middleware import Delivery, Retry, Stats
from tidings.middleware.inbox import InboxMiddleware
from tidings.subscriber import Subscriber
from tidings.testing import eventually, running
from tidings.transport import Record

TOPIC = "task-events"
PARTITIONS = 4

effects_md = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_md,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),  # no unique key: doubles show
    sa.Column("handler", sa.String(64), nullable=False),
)


def middleware() -> list[Any]:
    # Until InboxMiddleware is in default_middleware(), pass it explicitly (innermost).
    return [Retry(base_delay=0.01, max_delay=0.02), InboxMiddleware()]


# -- fixtures -------------------------------------------------------------------------


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


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of the handlers' effects and the inbox's marks."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """A sync engine on the database, with the effects table, for the assertions."""
    eng = sa.create_engine(db_url)
    effects_md.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Inboxes and async engines to close at the end of the test, last first."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Inbox):
            await thing.close()
        else:
            await thing.dispose()


@pytest.fixture
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Tidings]:
    """An app on a SQLite log; on Kafka too for tests marked with ``ON_EVERY_LOG``."""
    kind = getattr(request, "param", "sqlite")
    tidings = Tidings(log_url(request, PARTITIONS, kind), service="test")
    tidings.topic(TOPIC, partitions=PARTITIONS)
    async with tidings:
        yield tidings


def effect_rows(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(effects.c.event_id, effects.c.handler))]


def mark_rows(engine: sa.Engine, inbox: Inbox) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        t = inbox.table
        return [tuple(r) for r in conn.execute(sa.select(t.c.consumer, t.c.event_id))]


def add_effect(session: Any, ctx: Context, handler: str = "h") -> Any:
    """The handler's write, through ``ctx.session`` (a Core insert: flushed at once)."""
    return session.execute(effects.insert().values(event_id=ctx.id, handler=handler))


def subscribe_writer(
    app: Tidings, inbox: Inbox, kind: str, calls: list[str], *, group: str = "g"
) -> None:
    """A handler of ``kind`` (sync/async) that writes one effect row per call."""
    if kind == "sync":

        @app.subscriber(TOPIC, group=group, inbox=inbox)
        def write(payload: Any, ctx: Context) -> None:
            assert isinstance(ctx.session, Session)
            calls.append(ctx.id)
            add_effect(ctx.session, ctx)

    else:

        @app.subscriber(TOPIC, group=group, inbox=inbox)
        async def write_async(payload: Any, ctx: Context) -> None:
            assert isinstance(ctx.session, AsyncSession)
            calls.append(ctx.id)
            await add_effect(ctx.session, ctx)


# -- through a worker -----------------------------------------------------------------


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


async def test_every_handler_of_a_group_handles_the_event_once(
    app: Tidings, tmp_path: Path, closing: list[Any]
) -> None:
    inbox = Inbox(f"sqlite:///{tmp_path / 'ids.db'}")
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
    assert inbox.key(app.subscribers[0]) == "g:tests.test_inbox.test_every_handler_of_a_group_"\
        "handles_the_event_once.<locals>.first"  # fmt: skip


@pytest.mark.parametrize("given", ["url", "async_engine"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_handler_without_a_database_uses_the_inbox_as_an_id_store(
    app: Tidings, db_url: str, closing: list[Any], kind: str, given: str
) -> None:
    if given == "url":
        inbox = Inbox(db_url, retention=timedelta(hours=1))
    else:
        async_engine = create_async_engine(_async_url(db_url))
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
    app: Tidings, engine: sa.Engine, closing: list[Any], kind: str
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
async def test_a_new_sqlite_inbox_waits_for_another_processes_write(
    tmp_path: Path, kind: str
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    app: Tidings, tmp_path: Path, closing: list[Any]
) -> None:
    inbox = Inbox(f"sqlite:///{tmp_path / 'ids.db'}")
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


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_handler_that_leaves_its_session_unused_is_marked_all_the_same(
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], kind: str
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
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any]
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


# -- engines and session makers --------------------------------------------------------


def _async_url(db_url: str) -> str:
    return db_url.replace("sqlite:///", "sqlite+aiosqlite:///", 1)


@pytest.mark.parametrize("given", ["engine", "sessionmaker"])
async def test_an_inbox_on_your_engine_gives_sync_handlers_its_sessions(
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], given: str
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
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], given: str
) -> None:
    async_engine = create_async_engine(_async_url(db_url))
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
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any], uses_session: bool
) -> None:
    # As with asyncpg: the mark statements go through exec_driver_sql.
    async_engine = create_async_engine(_async_url(db_url))
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
    app: Tidings, tmp_path: Path, closing: list[Any]
) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
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
    eng.dispose()
    assert calls == [event.id]
    assert worker.stats.duplicates == 1
    assert len(errors) == 1
    assert "async def handler" in errors[0]
    assert "only a sync Engine" in errors[0]


# -- the middleware, called directly ----------------------------------------------------


def subscriber(
    inbox: Inbox | None, handler: Callable[..., Any], *, is_async: bool = True, group: str = "g"
) -> Subscriber:
    return Subscriber(
        topic=TOPIC,
        group=group,
        handler=handler,
        types=None,
        start_from="earliest",
        is_async=is_async,
        takes_context=True,
        inbox=inbox,
    )


def delivery(sub: Subscriber, event: Event, stats: Stats) -> Delivery:
    return Delivery(sub, event, Record(TOPIC, 0, 0, 0, None, b""), sub.group, stats)


def an_event() -> Event:
    return Tidings("memory://", service="test").build({}, type="task.created")


async def test_subscribers_without_an_inbox_pass_straight_through() -> None:
    seen: list[Any] = []

    async def call_next(d: Delivery) -> None:
        seen.append(d.session)

    d = delivery(subscriber(None, lambda p, c: None), an_event(), Stats())
    await InboxMiddleware().handle(d, call_next)
    assert seen == [None]
    assert d.stats.duplicates == 0


async def test_an_inbox_that_is_not_an_inbox_is_refused() -> None:
    async def call_next(d: Delivery) -> None:
        raise AssertionError("not called")

    d = delivery(subscriber("nope", lambda p, c: None), an_event(), Stats())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"takes a tidings\.Inbox"):
        await InboxMiddleware().handle(d, call_next)


def _writer(kind: str, calls: list[str], pause: float) -> Callable[[Delivery], Any]:
    """A call_next that writes one effect through ``delivery.session`` after ``pause``;
    with a sync session it does so in a thread, as the worker runs sync handlers."""

    async def call_next(d: Delivery) -> None:
        calls.append(d.event.id)
        await asyncio.sleep(pause)
        stmt = effects.insert().values(event_id=d.event.id, handler="h")
        if kind == "async":
            await d.session.execute(stmt)
        else:
            await asyncio.to_thread(d.session.execute, stmt)

    return call_next


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_concurrent_deliveries_of_one_event_have_one_effect(
    db_url: str, engine: sa.Engine, closing: list[Any], kind: str
) -> None:
    inbox = Inbox(db_url)
    closing.append(inbox)
    calls: list[str] = []
    stats = Stats()
    sub = subscriber(inbox, lambda p, c: None, is_async=kind == "async")
    event = an_event()
    mw = InboxMiddleware()
    call_next = _writer(kind, calls, 0.1)
    await asyncio.gather(*(mw.handle(delivery(sub, event, stats), call_next) for _ in range(2)))
    assert calls == [event.id]  # the second waited for the first, then found its mark
    assert stats.duplicates == 1
    assert len(effect_rows(engine)) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_two_processes_racing_on_one_event_commit_one_effect(
    db_url: str, engine: sa.Engine, closing: list[Any], kind: str
) -> None:
    # Two Inbox objects with their own engines: as two worker processes would be.
    first, second = Inbox(db_url), Inbox(db_url)
    closing += [first, second]
    await first.create_table_async()
    calls: list[str] = []
    stats = Stats()
    event = an_event()

    def handler(p: Any, c: Any) -> None: ...

    call_next = _writer(kind, calls, 0.2)
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
    if db_url.startswith("postgresql"):
        # The first's mark holds a row lock: the second waits, finds it, never runs.
        assert calls == [event.id]
    else:
        # SQLite: both may run; the second's transaction, effect and all, is undone.
        assert calls in ([event.id], [event.id, event.id])


async def test_a_cancelled_delivery_leaves_no_mark_and_gives_its_connection_back(
    tmp_path: Path, closing: list[Any]
) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
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
    tmp_path: Path, closing: list[Any]
) -> None:
    inbox = Inbox(f"sqlite:///{tmp_path / 'ids.db'}")
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
    await mw.handle(delivery(subscriber(inbox, make(), group="h"), an_event(), Stats()), call_next)


# -- retention ---------------------------------------------------------------------------


def _old_marks(engine: sa.Engine, inbox: Inbox, consumer: str, ages: list[timedelta]) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            inbox.table.insert(),
            [
                {"consumer": consumer, "event_id": f"e{i}", "handled_at": now - age}
                for i, age in enumerate(ages)
            ],
        )


async def test_sweep_deletes_the_marks_older_than_the_retention(
    db_url: str, engine: sa.Engine, closing: list[Any]
) -> None:
    inbox = Inbox(db_url, retention=timedelta(days=7))
    closing.append(inbox)
    inbox.create_table()
    old = [timedelta(days=8)] * (SWEEP_BATCH + 7)  # more than one batch
    _old_marks(engine, inbox, "g:x.h", [*old, timedelta(days=6), timedelta(minutes=1)])
    assert await inbox.sweep() == SWEEP_BATCH + 7
    assert len(mark_rows(engine, inbox)) == 2
    assert await inbox.sweep() == 0
    assert await Inbox(db_url, retention=None).sweep() == 0  # keeps them all


async def test_old_marks_are_swept_in_the_background_and_then_their_event_is_new(
    app: Tidings, db_url: str, engine: sa.Engine, closing: list[Any]
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
    _old_marks(engine, inbox, consumer, [timedelta(days=2)])  # handled long ago as "e0"
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


# -- setup ---------------------------------------------------------------------------------


async def test_create_table_and_metadata_for_alembic(tmp_path: Path, closing: list[Any]) -> None:
    metadata = sa.MetaData()
    url = f"sqlite:///{tmp_path / 'app.db'}"
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
    tmp_path: Path, closing: list[Any]
) -> None:
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    closing.append(async_engine)
    inbox = Inbox(async_engine)
    with pytest.raises(ConfigError, match="create_table_async"):
        inbox.create_table()
    await inbox.create_table_async()
    async with async_engine.connect() as conn:
        assert await conn.run_sync(lambda c: sa.inspect(c).has_table("tidings_inbox"))


async def test_marks_can_live_in_a_postgresql_schema(pg_url: str, closing: list[Any]) -> None:
    eng = sa.create_engine(pg_url)
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


@pytest.mark.parametrize(
    ("db", "match"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://u@h/d", "SQLite and PostgreSQL"),
        ("not a url", "not a database URL"),
        (42, "takes a database URL"),
        (sessionmaker(), "bound to one engine"),
    ],
)
def test_bad_databases_are_refused(db: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Inbox(db)


@pytest.mark.parametrize("retention", [timedelta(0), timedelta(days=-1), 3600, "7d"])
def test_retention_must_be_a_positive_timedelta(tmp_path: Path, retention: Any) -> None:
    with pytest.raises(ConfigError, match="retention"):
        Inbox(f"sqlite:///{tmp_path / 'x.db'}", retention=retention)


def test_repr_hides_the_password() -> None:
    inbox = Inbox("postgresql+psycopg://app:secret@db/app")
    assert "secret" not in repr(inbox)
    assert "tidings_inbox" in repr(inbox)


async def test_two_handlers_sharing_an_inbox_key_are_refused_when_declared(
    tmp_path: Path, closing: list[Any]
) -> None:
    from tidings import Tidings

    inbox = Inbox(f"sqlite:///{tmp_path / 'ids.db'}")
    closing.append(inbox)
    app = Tidings("memory://", service="t")

    def make() -> Callable[..., Any]:
        async def handler(payload: Any) -> None: ...

        return handler

    app.subscriber("t", group="g", inbox=inbox)(make())
    with pytest.raises(ConfigError, match="share the inbox key"):
        app.subscriber("t", group="g", inbox=inbox)(make())
    app.subscriber("t", group="h", inbox=inbox)(make())  # another group, another key
    with pytest.raises(ConfigError, match=r"inbox=\.\.\.\) takes a tidings\.Inbox"):
        app.subscriber("t", group="g", inbox="sqlite:///x.db")(make())
