"""Rebuilding a projection while it serves: under live traffic, a reader never sees
a partial table (the counts' total always equals what the positions say was applied,
and never goes down), and the rebuilt table equals a count from scratch. One rebuild
at a time; a failed or finished rebuild leaves no shadow behind."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.projections.helpers import (
    Board,
    count_statement,
    counts,
    created,
    expected,
    publish,
    read_counts,
    snapshot,
)
from tidings import Context, Tidings
from tidings.errors import RebuildRunning
from tidings.testing import eventually, running


class Reader(threading.Thread):
    """Polls the projection's table in a thread of its own, as an API would, and
    records every read that is not a whole model: a total that differs from the
    applied events the positions count, or one lower than an earlier read."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.reads = 0
        self.bad: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        last = 0
        deadline = time.monotonic() + 300  # bounded, whatever happens to the test
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                total, applied = snapshot(self.engine)
                self.reads += 1
                if total != applied:
                    self.bad.append(f"read {self.reads}: total {total} != applied {applied}")
                if total < last:
                    self.bad.append(f"read {self.reads}: total {total} < earlier {last}")
                last = total
                time.sleep(0.001)
        except BaseException as exc:
            self.error = exc


async def test_rebuild_under_live_traffic_readers_never_see_a_partial_table(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 200)
    rebuilt = asyncio.Event()
    published = 200

    async def traffic() -> None:  # appends until the rebuild has swapped (3000 at most)
        nonlocal published
        while not rebuilt.is_set() and published < 3000:
            await publish(board.app, published, published + 10)
            published += 10
            await asyncio.sleep(0.005)

    async with running(board.app):
        await eventually(lambda: snapshot(engine) == (200, 200), what="200 applied", timeout=60)
        reader = Reader(engine)
        reader.start()
        publisher = asyncio.create_task(traffic())
        try:
            report = await board.projection.rebuild(batch=50)
        finally:
            rebuilt.set()
            await publisher
        assert reader.bad == []  # so far: around the swap
        await eventually(
            lambda: snapshot(engine) == (published, published), what="all applied", timeout=60
        )
        reader.stop.set()
        await asyncio.to_thread(reader.join, 30)
    assert reader.error is None, reader.error
    assert reader.bad == []
    assert reader.reads > 10
    assert report.applied >= 200
    assert report.failed == 0
    assert published > 200  # the rebuild ran under traffic
    assert read_counts(engine) == expected(published)
    assert (await board.projection.status()).rebuilding is None


async def test_rebuild_replaces_a_damaged_model_with_the_count_from_scratch(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 60)
    async with running(board.app):
        await eventually(lambda: snapshot(engine) == (60, 60), what="60 applied")
    with engine.begin() as conn:  # damage the model: the handlers alone would never fix it
        conn.execute(sa.update(counts).values(n=0))
        conn.execute(sa.insert(counts).values(assignee="nobody", n=7))
    report = await board.projection.rebuild(batch=7)
    assert report.applied == 60
    assert report.rounds == 1
    assert read_counts(engine) == expected(60)
    assert snapshot(engine) == (60, 60)
    # The live projection goes on from the swapped-in positions: no event twice.
    await publish(board.app, 60, 70)
    async with running(board.app):
        await eventually(lambda: snapshot(engine) == (70, 70), what="70 applied")
    assert read_counts(engine) == expected(70)
    _no_shadow_left(board, engine)


async def test_a_handler_failing_in_a_rebuild_loses_its_event_only(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 20)
    board.fail_on.add("t4")
    report = await board.projection.rebuild(batch=5)
    assert (report.applied, report.failed) == (19, 1)
    assert sum(read_counts(engine).values()) == 19


async def test_a_second_rebuild_while_one_runs_is_refused(board: Board, engine: sa.Engine) -> None:
    await publish(board.app, 0, 10)
    projection = board.projection
    await asyncio.to_thread(projection.db.claim_rebuild)  # another process's rebuild
    with pytest.raises(RebuildRunning, match="a rebuild runs since"):
        await projection.rebuild()
    status = await projection.status()
    assert status.rebuilding is not None
    assert str(os.getpid()) in status.rebuilding.owner
    assert status.to_json()["rebuilding"]["owner"] == status.rebuilding.owner
    # The refused rebuild left the running one's marker alone; it ends, and the next runs.
    await asyncio.to_thread(projection.db.release_rebuild)
    assert (await projection.rebuild()).applied == 10


async def test_a_rebuild_asked_for_while_one_applies_events_is_refused(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 30)
    board.hold = threading.Event()
    first = asyncio.create_task(board.projection.rebuild(batch=3))
    try:
        await eventually(lambda: board.calls, what="the first rebuild applying events")
        with pytest.raises(RebuildRunning, match="a rebuild runs since"):
            await board.projection.rebuild()
    finally:
        board.hold.set()
    assert (await first).applied == 30
    assert read_counts(engine) == expected(30)
    _no_shadow_left(board, engine)


async def test_a_rebuild_that_died_is_taken_over_after_it_went_quiet(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 5)
    quiet = time.time() - 3600
    await asyncio.to_thread(board.projection.db.claim_rebuild, quiet)
    assert (await board.projection.rebuild()).applied == 5
    assert (await board.projection.status()).rebuilding is None


def _no_shadow_left(board: Board, engine: sa.Engine) -> None:
    db = board.projection.db
    if db.is_sqlite:
        assert db.url.database is not None
        assert not Path(db.url.database + ".rebuild").exists()
        return
    with engine.connect() as conn:
        schemas = conn.execute(
            sa.text(
                "SELECT schema_name FROM information_schema.schemata "
                "WHERE schema_name LIKE 'tidings_rebuild%'"
            )
        ).all()
    assert schemas == []


async def test_after_a_rebuild_the_position_covers_events_of_other_types(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 6)
    await board.app.publish_many(
        "task-events",
        [{"n": i} for i in range(6)],
        type="task.noted",
        subject=lambda p: f"t{p['n']}",
    )
    status = await board.projection.status()
    assert status.lag == 12
    report = await board.projection.rebuild()
    assert report.applied == 6
    assert (await board.projection.status()).lag == 0  # nothing left for it to read
    assert read_counts(engine) == expected(6)


async def test_a_projection_of_two_topics_applies_and_rebuilds_both(
    sqlite_url: str, db_url: str, engine: sa.Engine
) -> None:
    app = Tidings(f"{sqlite_url}?partitions=2", service="test")
    both = app.projection("both", topic=["left", "right"], db=db_url, tables=[counts])
    dialect = engine.dialect.name

    @both.on("task.created")
    def count(payload: dict[str, object], ctx: Context) -> None:
        ctx.session.execute(count_statement(dialect, str(payload["assignee"])))

    assert [s.topic for s in app.subscribers] == ["left", "right"]
    assert {s.group for s in app.subscribers} == {"both"}
    async with app:
        for topic in ("left", "right"):
            await app.publish_many(topic, [created(i) for i in range(10)], type="task.created")
        async with running(app):
            await eventually(lambda: snapshot(engine, "both") == (20, 20), what="20 applied")
        report = await both.rebuild()
        assert report.applied == 20
        assert {t for t, _ in report.positions} == {"left", "right"}
    both.close()
    assert read_counts(engine) == {k: 2 * v for k, v in expected(10).items()}
