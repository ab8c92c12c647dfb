"""The transactional outbox on SQLite and on a real PostgreSQL: what is committed is
relayed, in order per key; what rolls back is not; delayed events wait for their time;
bad input fails in add(); failures of the log and of the database are retried."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tidings import ConfigError, Event, EventTooLarge, Tidings, TransportError
from tidings.errors import InvalidPayload
from tidings.outbox import Outbox, OutboxError
from tidings.testing import eventually

from .conftest import (
    ON_EVERY_LOG,
    TOPIC,
    TaskCreated,
    Unregistered,
    async_url,
    by_key,
    log_events,
)


async def relay_all(outbox: Outbox, **options: float) -> int:
    """Relay passes until one finds nothing; the events moved."""
    relay = outbox.relay(**options)  # type: ignore[arg-type]
    moved = 0
    try:
        while n := await relay.relay_once():
            moved += n
    finally:
        await relay.close()
    return moved


def pending(outbox: Outbox, engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(outbox.table)).scalar_one())


# -- committed, rolled back ----------------------------------------------------------


@ON_EVERY_LOG
async def test_committed_events_are_relayed_and_deleted(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    with Session(engine) as session, session.begin():
        added = [outbox.add(session, TaskCreated(task_id=f"t-{i}", n=i)) for i in range(3)]
        plain = outbox.add(session, {"note": "hi"}, type="task.noted", subject="t-0")
    async with app:
        assert await relay_all(outbox) == 4
        events = await log_events(app)
    assert {e.id for e in events} == {e.id for e in [*added, plain]}
    got = {e.id: e for e in events}
    assert got[added[1].id].data == {"task_id": "t-1", "n": 1}
    assert got[added[1].id].type == "task.created"
    assert got[added[1].id].source == "task-api"
    assert got[plain.id].subject == "t-0"
    assert pending(outbox, engine) == 0  # relayed rows are deleted


async def test_rolled_back_events_are_never_relayed(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    with Session(engine) as session:
        with session.begin():
            kept = outbox.add(session, TaskCreated(task_id="t-1"))
        session.begin()
        outbox.add(session, TaskCreated(task_id="t-2"))
        session.rollback()
        with pytest.raises(RuntimeError), session.begin():  # noqa: PT012
            outbox.add(session, TaskCreated(task_id="t-3"))
            raise RuntimeError("the handler failed after adding")
    async with app:
        assert await relay_all(outbox) == 1
        assert [e.id for e in await log_events(app)] == [kept.id]


async def test_add_through_a_core_connection(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    with engine.begin() as conn:
        event = outbox.add(conn, TaskCreated(task_id="t-9"))
    async with app:
        await relay_all(outbox)
        assert [e.id for e in await log_events(app)] == [event.id]


async def test_add_flushes_the_session_first(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """The INSERT runs in add(), after the session's pending ORM writes are flushed:
    the event's seq is drawn after their row locks were taken."""

    class Base(DeclarativeBase):
        pass

    class Task(Base):
        __tablename__ = "tasks"
        id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    Base.metadata.create_all(engine)
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split("(")[0].strip())

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session, session.begin():
            session.add(Task(id="t-1"))
            outbox.add(session, TaskCreated(task_id="t-1"))
            assert statements == ["INSERT INTO tasks", "INSERT INTO tidings_outbox"]
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


# -- async sessions and engines ------------------------------------------------------


async def test_async_session_and_async_engine(
    app: Tidings, aengine: AsyncEngine, db_url: str
) -> None:
    outbox = Outbox(app, aengine, topic=TOPIC)
    await outbox.create_table_async()
    async with AsyncSession(aengine) as session, session.begin():
        first = await outbox.add_async(session, TaskCreated(task_id="t-1", n=1))
        second = await outbox.add_async(session, TaskCreated(task_id="t-1", n=2))
    async with aengine.begin() as conn:  # an AsyncConnection works too
        third = await outbox.add_async(conn, TaskCreated(task_id="t-1", n=3))
    async with AsyncSession(aengine) as session:
        await session.begin()
        await outbox.add_async(session, TaskCreated(task_id="t-1", n=4))
        await session.rollback()
    async with app:
        assert await relay_all(outbox) == 3
        events = await log_events(app)
    assert [e.id for e in events] == [first.id, second.id, third.id]
    status = await outbox.status()
    assert status.pending == 0
    await outbox.dispose()  # not its engine: a no-op, the fixture disposes it


async def test_async_session_to_add_and_sync_to_add_async_are_refused(
    outbox: Outbox, engine: sa.Engine, aengine: AsyncEngine
) -> None:
    async with AsyncSession(aengine) as session:
        with pytest.raises(ConfigError, match="add_async"):
            outbox.add(session, TaskCreated(task_id="t-1"))
    with Session(engine) as session, pytest.raises(ConfigError, match=r"outbox\.add\(session"):
        await outbox.add_async(session, TaskCreated(task_id="t-1"))


async def test_create_table_needs_the_async_call_for_an_async_engine(
    app: Tidings, aengine: AsyncEngine
) -> None:
    outbox = Outbox(app, aengine, topic=TOPIC)
    with pytest.raises(ConfigError, match="create_table_async"):
        outbox.create_table()


async def test_an_async_url_makes_an_async_engine(app: Tidings, db_url: str) -> None:
    outbox = Outbox(app, db_url, topic=TOPIC)
    assert isinstance(outbox.engine, sa.Engine)
    await outbox.dispose()
    outbox = Outbox(app, async_url(db_url), topic=TOPIC)
    assert isinstance(outbox.engine, AsyncEngine)
    await outbox.create_table_async()
    async with AsyncSession(outbox.engine) as session, session.begin():
        await outbox.add_async(session, TaskCreated(task_id="t-1"))
    async with app:
        assert await relay_all(outbox) == 1
    await outbox.dispose()


# -- order ------------------------------------------------------------------------------


@ON_EVERY_LOG
async def test_order_per_key_over_many_rows_and_passes(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    expected: dict[str, list[int]] = {}
    n = 0
    for _tx in range(20):
        with Session(engine) as session, session.begin():
            for _ in range(60):
                key = f"t-{n % 7}"
                outbox.add(session, TaskCreated(task_id=key, n=n))
                expected.setdefault(key, []).append(n)
                n += 1
    async with app:
        assert await relay_all(outbox, batch=97) == n
        events = await log_events(app)
    assert len(events) == n
    assert len({e.id for e in events}) == n
    got = {k: [d["n"] for d in v] for k, v in by_key(events).items()}
    assert got == expected


async def test_runs_of_topics_keep_row_order(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    with Session(engine) as session, session.begin():
        for i in range(12):
            topic = TOPIC if i % 3 else "audit-events"
            outbox.add(session, TaskCreated(task_id="t-1", n=i), topic=topic)
    async with app:
        assert await relay_all(outbox) == 12
        main = [e.data["n"] for e in await log_events(app, TOPIC)]
        audit = [e.data["n"] for e in await log_events(app, "audit-events")]
    assert main == [1, 2, 4, 5, 7, 8, 10, 11]
    assert audit == [0, 3, 6, 9]


async def test_key_option_and_ready_events(app: Tidings, outbox: Outbox, engine: sa.Engine) -> None:
    ready = app.build({"a": 1}, type="task.noted", subject="t-1")
    with Session(engine) as session, session.begin():
        keyed = outbox.add(session, TaskCreated(task_id="t-1"), key="tenant-7")
        same = outbox.add(session, ready)
        rekeyed = outbox.add(session, app.build({"a": 2}, type="task.noted"), key="tenant-7")
    assert keyed.key == "tenant-7"
    assert keyed.subject == "t-1"
    assert same is ready
    assert rekeyed.key == "tenant-7"
    async with app:
        await relay_all(outbox)
        events = await log_events(app)
    assert [e.id for e in by_key_events(events)["tenant-7"]] == [keyed.id, rekeyed.id]
    assert {e.id for e in events} == {keyed.id, ready.id, rekeyed.id}


def by_key_events(events: list[Event]) -> dict[str | None, list[Event]]:
    out: dict[str | None, list[Event]] = {}
    for e in events:
        out.setdefault(e.key, []).append(e)
    return out


# -- PostgreSQL: seq is drawn at insert, not at commit -------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_pg_lower_seq_committing_late_is_relayed_in_commit_order(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """T1 inserts (lower seq), T2 inserts and commits, the relay runs, T1 commits: T1's
    event is not lost, and it follows T2's in the log: the order the two committed."""
    t1 = Session(engine)
    t1.begin()
    first = outbox.add(t1, TaskCreated(task_id="t-1", n=1))
    with Session(engine) as t2, t2.begin():
        second = outbox.add(t2, TaskCreated(task_id="t-1", n=2))
    async with app:
        relay = outbox.relay()
        try:
            assert await relay.relay_once() == 1  # T2's; T1's row is not visible yet
            t1.commit()
            t1.close()
            assert await relay.relay_once() == 1
            assert await relay.relay_once() == 0
        finally:
            await relay.close()
        events = await log_events(app)
    assert [e.id for e in events] == [second.id, first.id]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_pg_transactions_serialised_by_a_row_lock_keep_their_order(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """Two updates of one task, the second waiting for the first's row lock: since
    add() inserts after the lock was taken, the events are relayed in lock order,
    whenever the relay looks."""
    tasks = sa.Table(
        "tasks",
        sa.MetaData(),
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("n", sa.Integer),
    )
    tasks.create(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(tasks).values(id="t-1", n=0))

    def update(session: Session, n: int) -> Event:
        session.execute(sa.update(tasks).where(tasks.c.id == "t-1").values(n=n))
        return outbox.add(session, TaskCreated(task_id="t-1", n=n))

    t1 = Session(engine)
    t1.begin()
    first = update(t1, 1)
    got: list[Event] = []

    def second_transaction() -> None:
        with Session(engine) as t2, t2.begin():
            got.append(update(t2, 2))  # waits for t1's lock

    thread = threading.Thread(target=second_transaction)
    thread.start()
    try:
        async with app:
            await asyncio.sleep(0.2)
            assert not got  # blocked on the row lock
            assert await relay_all(outbox) == 0
            t1.commit()
            t1.close()
            await asyncio.to_thread(thread.join, 10)
            assert await relay_all(outbox) == 2
            events = await log_events(app)
    finally:
        thread.join(10)
    assert [e.id for e in events] == [first.id, got[0].id]


# -- delayed events -------------------------------------------------------------------


@ON_EVERY_LOG
async def test_delayed_event_waits_for_its_time_without_blocking_others(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    # Time passes by moving the delayed row's deliver_at, not by the wall clock: on a
    # busy machine any wall-clock delay may run out before its "not yet" is checked.
    with Session(engine) as session, session.begin():
        later = outbox.add(session, TaskCreated(task_id="t-1", n=1), deliver_at=timedelta(hours=1))
        now = outbox.add(session, TaskCreated(task_id="t-2", n=2))
        outbox.add(
            session,
            TaskCreated(task_id="t-3", n=3),
            deliver_at=datetime.now(UTC) + timedelta(hours=2),
        )
    stop = asyncio.Event()
    async with app:
        task = asyncio.create_task(outbox.relay(poll_interval=0.02).run(stop))
        try:
            # not held back by the delayed ones
            await eventually(lambda: _ids(app, {now.id}), timeout=10, what="the immediate event")
            # The relay appends, then deletes its row: wait for the delete too.
            await eventually(lambda: _counts(outbox, (2, 0, 2)), timeout=10, what="its row gone")
            assert later.id not in {e.id for e in await log_events(app)}
            with engine.begin() as conn:  # its time comes
                table = outbox.table
                conn.execute(
                    sa.update(table)
                    .where(table.c.event_id == later.id)
                    .values(deliver_at=datetime.now(UTC) - timedelta(seconds=1))
                )
            await eventually(lambda: _ids(app, {now.id, later.id}), timeout=10, what="due")
            await eventually(lambda: _counts(outbox, (1, 0, 1)), timeout=10, what="its row gone")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        assert len(await log_events(app)) == 2  # the one due in an hour still waits
    assert pending(outbox, engine) == 1


async def _ids(app: Tidings, wanted: set[str]) -> bool:
    return wanted <= {e.id for e in await log_events(app)}


async def _counts(outbox: Outbox, wanted: tuple[int, int, int]) -> bool:
    """Whether the outbox's (pending, due, scheduled) rows are ``wanted``."""
    status = await outbox.status()
    return (status.pending, status.due, status.scheduled) == wanted


async def test_due_delayed_rows_interleave_by_time_in_a_catch_up(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """Rows that piled up while no relay ran: a delayed row is published at its due
    time among the immediate ones; delayed rows among themselves by due time."""
    base = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        outbox.add(session, TaskCreated(task_id="t-1", n=1))
        outbox.add(session, TaskCreated(task_id="t-1", n=4), deliver_at=base + _ms(700))
        outbox.add(session, TaskCreated(task_id="t-1", n=3), deliver_at=base + _ms(200))
    await asyncio.sleep(0.3)
    with Session(engine) as session, session.begin():
        outbox.add(session, TaskCreated(task_id="t-1", n=2))  # after n=3 became due
    await asyncio.sleep(max(0.0, (base + _ms(800) - datetime.now(UTC)).total_seconds()))
    async with app:
        await relay_all(outbox)
        order = [e.data["n"] for e in await log_events(app)]
    assert order == [1, 3, 2, 4]


def _ms(n: int) -> timedelta:
    return timedelta(milliseconds=n)


# -- failures ------------------------------------------------------------------------------


@ON_EVERY_LOG
async def test_transport_errors_are_retried_without_loss_or_reordering(
    app: Tidings,
    outbox: Outbox,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Session(engine) as session, session.begin():
        for i in range(50):
            outbox.add(session, TaskCreated(task_id=f"t-{i % 3}", n=i))
    real = app.transport.append
    calls = {"n": 0}

    async def flaky(topic: str, records: list[tuple[str | None, bytes]]) -> list[tuple[int, int]]:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise TransportError("the log is busy")
        return await real(topic, records)

    stop = asyncio.Event()
    caplog.set_level(logging.INFO, "tidings.outbox")
    async with app:  # (its start registers the app's schemas: an append of its own)
        monkeypatch.setattr(app.transport, "append", flaky)
        relay = outbox.relay(batch=20, poll_interval=0.01)
        task = asyncio.create_task(relay.run(stop))
        try:
            await eventually(lambda: _count(app, 50), timeout=20, what="all 50 relayed")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        events = await log_events(app)
    assert len(events) == 50  # nothing appended twice: a failed append wrote nothing
    got = {k: [d["n"] for d in v] for k, v in by_key(events).items()}
    assert got == {f"t-{k}": list(range(k, 50, 3)) for k in range(3)}
    failures = [r for r in caplog.records if "pass failed" in r.getMessage()]
    assert len(failures) == 3
    assert "TransportError: the log is busy" in failures[0].getMessage()
    assert any("working again after 3" in r.getMessage() for r in caplog.records)


async def _count(app: Tidings, n: int) -> bool:
    return len(await log_events(app)) >= n


async def test_database_errors_are_retried_and_a_failed_delete_only_duplicates(
    app: Tidings,
    outbox: Outbox,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Session(engine) as session, session.begin():
        added = [outbox.add(session, TaskCreated(task_id="t-1", n=i)) for i in range(10)]
    real_due, real_forget = outbox._due, outbox._forget
    fail = {"due": 2, "forget": 1}

    def due(conn: sa.Connection, limit: int) -> list[Any]:
        if fail["due"]:
            fail["due"] -= 1
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return real_due(conn, limit)

    def forget(conn: sa.Connection, seqs: list[int]) -> None:
        if fail["forget"]:
            fail["forget"] -= 1
            raise OperationalError("DELETE", {}, Exception("server closed the connection"))
        real_forget(conn, seqs)

    monkeypatch.setattr(outbox, "_due", due)
    monkeypatch.setattr(outbox, "_forget", forget)
    stop = asyncio.Event()
    async with app:
        task = asyncio.create_task(outbox.relay(poll_interval=0.01).run(stop))
        try:
            await eventually(lambda: _count(app, 20), timeout=20, what="relayed twice")
            await eventually(lambda: pending(outbox, engine) == 0, what="rows deleted")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        events = await log_events(app)
    # The append before the failed delete happened: at least once means twice here,
    # with the same ids (an inbox drops the second copy), each copy in order.
    ids = [e.id for e in added]
    assert [e.id for e in events] == ids + ids
    messages = [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]
    assert len(messages) == 3
    assert "database is locked" in messages[0]
    assert "server closed the connection" in messages[2]


async def test_run_retries_a_database_that_is_not_there_yet(
    app: Tidings, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "later"
    outbox = Outbox(app, f"sqlite:///{folder / 'app.db'}", topic=TOPIC)
    stop = asyncio.Event()
    async with app:
        relay = outbox.relay(poll_interval=0.01)
        task = asyncio.create_task(relay.run(stop))
        try:
            await eventually(
                lambda: any("pass failed" in r.getMessage() for r in caplog.records),
                what="a logged failure",
            )
            folder.mkdir()
            await eventually(lambda: relay.holding, timeout=15, what="the relay starting")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert "unable to open database file" in caplog.text


async def test_run_stops_promptly_and_releases(app: Tidings, outbox: Outbox) -> None:
    stop = asyncio.Event()
    relay = outbox.relay(lease=30)
    task = asyncio.create_task(relay.run(stop))
    await eventually(lambda: relay.holding, what="holding")
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 1
    status = await outbox.status()
    assert status.holder is None
    assert relay.name == "outbox-relay:tidings_outbox"


async def test_a_commit_in_the_relays_process_wakes_it_before_its_next_poll(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    stop = asyncio.Event()
    relay = outbox.relay(poll_interval=30)  # only a wake-up can relay within the test
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: relay.holding, what="holding")
        await asyncio.sleep(0.2)  # the first (empty) pass is over: the relay is idle

        def commit(n: int, *, rollback: bool = False) -> None:
            with Session(engine) as session:
                with session.begin():
                    outbox.add(session, TaskCreated(task_id=f"w-{n}", n=n))
                    if rollback:
                        session.rollback()
                with session.begin():  # a later commit on the same session adds nothing
                    pass

        await asyncio.to_thread(commit, 1)
        await eventually(lambda: relay.relayed == 1, timeout=5, what="the woken relay")
        await asyncio.to_thread(commit, 2, rollback=True)
        await asyncio.to_thread(commit, 3)  # from another thread, as a FastAPI endpoint
        await eventually(lambda: relay.relayed == 2, timeout=5, what="the second wake-up")
    finally:
        stop.set()
        await task
    assert not outbox._relays  # a stopped relay is not woken any more


# -- bad input ---------------------------------------------------------------------------


async def test_bad_input_to_add_raises_before_writing(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    big = Tidings("memory://", service="task-api", max_event_bytes=2048)
    small = Outbox(big, engine, topic=TOPIC)
    with Session(engine) as session, session.begin():
        with pytest.raises(ConfigError, match=r"needs type=\.\.\."):
            outbox.add(session, {"a": 1})
        with pytest.raises(ConfigError, match="Unregistered is not registered"):
            outbox.add(session, Unregistered())
        with pytest.raises(
            EventTooLarge, match=r"task\.noted .* bytes encoded; the limit is 2,048"
        ):
            small.add(session, {"blob": "x" * 5000}, type="task.noted")
        with pytest.raises(ConfigError, match="has no time zone"):
            outbox.add(session, TaskCreated(task_id="t"), deliver_at=datetime(2030, 1, 1))
        with pytest.raises(ConfigError, match="datetime or a timedelta"):
            outbox.add(session, TaskCreated(task_id="t"), deliver_at=5)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="topic name 'no spaces' is not valid"):
            outbox.add(session, TaskCreated(task_id="t"), topic="no spaces")
        with pytest.raises(ConfigError, match="ready Event and build options"):
            outbox.add(session, app.build({"a": 1}, type="task.noted"), subject="x")
        with pytest.raises(ConfigError, match="extension name"):
            outbox.add(session, TaskCreated(task_id="t"), extensions={"Bad-Name": 1})
        kept = outbox.add(session, TaskCreated(task_id="t-1"))  # the transaction goes on
    untopical = Outbox(app, engine)
    with Session(engine) as session, pytest.raises(ConfigError, match="needs a topic"):
        untopical.add(session, TaskCreated(task_id="t"))
    async with app:
        assert await relay_all(outbox) == 1
        assert [e.id for e in await log_events(app)] == [kept.id]


async def test_a_dict_of_a_registered_type_is_checked_by_its_model_in_add(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    # Decision 0052: refused before the INSERT, the transaction can go on; a dict that
    # passes is written as its model's JSON form (the default n filled in, "2" an int).
    with Session(engine) as session, session.begin():
        with pytest.raises(InvalidPayload, match=r"task\.created v1: .* n: Input should be"):
            outbox.add(session, {"task_id": "t-1", "n": "two"}, type="task.created")
        assert pending(outbox, engine) == 0
        fine = outbox.add(session, {"task_id": "t-2", "n": "2"}, type="task.created")
        plain = outbox.add(session, {"task_id": "t-3"}, type="task.created")
    async with app:
        assert await relay_all(outbox) == 2
        relayed = await log_events(app)
    assert sorted((e.id, e.subject, e.dataversion) for e in relayed) == sorted(
        [(fine.id, "t-2", 1), (plain.id, "t-3", 1)]
    )
    assert sorted(e.data["n"] for e in relayed) == [0, 2]


async def test_the_same_event_twice_is_refused_by_its_unique_id(
    outbox: Outbox, engine: sa.Engine
) -> None:
    event = outbox.app.build(TaskCreated(task_id="t-1"))
    with Session(engine) as session, session.begin():
        outbox.add(session, event)
        with pytest.raises(IntegrityError):
            outbox.add(session, event)


def test_bad_configuration_is_refused(app: Tidings, tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/app.db"
    with pytest.raises(ConfigError, match="table name 'bad-name' is not valid"):
        Outbox(app, url, table="bad-name")
    with pytest.raises(ConfigError, match="topic name"):
        Outbox(app, url, topic="a b")
    with pytest.raises(ConfigError, match="cannot open the outbox database"):
        Outbox(app, "nosuchdb://x")
    with pytest.raises(ConfigError, match="cannot open the outbox database"):
        Outbox(app, "not a url")
    with pytest.raises(ConfigError, match="takes a database URL or a SQLAlchemy engine"):
        Outbox(app, 42)  # type: ignore[arg-type]
    outbox = Outbox(app, url)
    with pytest.raises(ConfigError, match="batch must be 1 to 10000"):
        outbox.relay(batch=0)
    with pytest.raises(ConfigError, match="poll_interval must be > 0"):
        outbox.relay(poll_interval=0)
    with pytest.raises(ConfigError, match=r"lease must be at least 0\.1"):
        outbox.relay(lease=0.01)


def test_postgres_urls_use_psycopg(app: Tidings) -> None:
    for url in ("postgres://u:secret@localhost/app", "postgresql://u:secret@localhost/app"):
        outbox = Outbox(app, url)
        assert outbox.url == "postgresql+psycopg://u:***@localhost/app"
        assert "secret" not in repr(outbox)


async def test_create_table_failure_is_one_clear_error(app: Tidings, tmp_path: object) -> None:
    outbox = Outbox(app, f"sqlite:///{tmp_path}/missing/app.db")
    with pytest.raises(OutboxError, match=r"cannot create .*unable to open database file"):
        outbox.create_table()
    with pytest.raises(OutboxError, match="unable to open database file"):
        await outbox.create_table_async()
    with pytest.raises(OutboxError, match="cannot read"):
        await outbox.status()


async def test_status_needs_the_table(app: Tidings, db_url: str) -> None:
    outbox = Outbox(app, db_url)
    try:
        with pytest.raises(ConfigError, match="no outbox table 'tidings_outbox'"):
            await outbox.status()
    finally:
        await outbox.dispose()


async def test_tables_join_the_callers_metadata(app: Tidings, engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    sa.Table("tasks", metadata, sa.Column("id", sa.Integer, primary_key=True))
    outbox = Outbox(app, engine, table="events_out", metadata=metadata)
    assert set(metadata.tables) == {"tasks", "events_out", "events_out_lease"}
    assert outbox.table is metadata.tables["events_out"]
    metadata.create_all(engine)  # as Alembic would
    outbox.create_table()  # already there: nothing to do
    assert {"events_out", "events_out_lease"} <= set(sa.inspect(engine).get_table_names())
