"""A projection's handlers and position commit together; a redelivery or a restart
has no second effect; status shows the position and the lag; bad input is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.projections.helpers import (
    PARTITIONS,
    TOPIC,
    Board,
    board_app,
    counts,
    expected,
    publish,
    read_counts,
    snapshot,
)
from tidings import ConfigError, InvalidEventType, Tidings
from tidings.testing import eventually, running


async def test_each_event_is_counted_once_with_its_position(
    board: Board, engine: sa.Engine
) -> None:
    await publish(board.app, 0, 40)
    async with running(board.app):
        await eventually(lambda: snapshot(engine) == (40, 40), what="40 events applied")
    assert read_counts(engine) == expected(40)
    assert sum(o + 1 for o in board.projection.positions().values()) == 40


async def test_a_handler_that_raises_leaves_neither_its_writes_nor_the_position(
    board: Board, engine: sa.Engine
) -> None:
    board.fail_on.add("t3")  # raises after its insert
    await publish(board.app, 0, 10)
    async with running(board.app):
        await eventually(lambda: snapshot(engine) == (9, 9), what="9 events applied")
        await eventually(lambda: len(board.calls) >= 11, what="t3 tried again")
    # Everything else was applied; t3's insert was rolled back with its position, so
    # the total still equals what the positions say.
    assert sum(read_counts(engine).values()) == 9


async def test_redelivered_events_are_passed_after_a_restart(
    sqlite_url: str, db_url: str, engine: sa.Engine
) -> None:
    log = f"{sqlite_url}?partitions={PARTITIONS}"
    first = board_app(log, db_url)
    first.app.topic(TOPIC, partitions=PARTITIONS)
    async with first.app:
        await publish(first.app, 0, 30)
        async with running(first.app):
            await eventually(lambda: snapshot(engine) == (30, 30), what="30 applied")
        # The log forgets the group's offsets (a reset): everything is delivered again.
        for p in range(PARTITIONS):
            await first.app.transport.set_offsets("board", TOPIC, {p: 0})
    first.projection.close()
    second = board_app(log, db_url)
    async with second.app:
        await publish(second.app, 30, 35)
        async with running(second.app):
            await eventually(lambda: snapshot(engine) == (35, 35), what="35 applied")
            await eventually(lambda: len(second.calls) == 5, what="the 5 new events")
        await asyncio.sleep(0)
    second.projection.close()
    assert len(second.calls) == 5  # the 30 redelivered events called no handler
    assert read_counts(engine) == expected(35)


async def test_status_shows_positions_end_and_lag(board: Board, engine: sa.Engine) -> None:
    await publish(board.app, 0, 12)
    status = await board.projection.status()
    assert status.name == "board"
    assert status.rebuilding is None
    assert [p.partition for p in status.partitions] == list(range(PARTITIONS))
    assert status.lag == 12
    assert all(p.position is None for p in status.partitions)
    async with running(board.app):
        await eventually(lambda: snapshot(engine) == (12, 12), what="12 applied")
    status = await board.projection.status()
    assert status.lag == 0
    assert sum(p.end for p in status.partitions) == 12
    assert {p.position for p in status.partitions if p.end} == {
        p.end - 1 for p in status.partitions if p.end
    }
    as_json = status.to_json()
    assert as_json["lag"] == 0
    assert len(as_json["partitions"]) == PARTITIONS


def test_bad_declarations_are_refused(tmp_path: Path) -> None:
    app = Tidings(f"sqlite:///{tmp_path / 'log.db'}", service="test")
    db = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(ConfigError, match="in-memory"):
        app.projection("a", topic=TOPIC, db="sqlite://", tables=[counts])
    with pytest.raises(ConfigError, match="tables"):
        app.projection("b", topic=TOPIC, db=db, tables=[])
    with pytest.raises(ConfigError, match="not valid"):
        app.projection("no.dots", topic=TOPIC, db=db, tables=[counts])
    with pytest.raises(ConfigError, match="SQLite or PostgreSQL"):
        app.projection("c", topic=TOPIC, db="mysql://x/y", tables=[counts])
    board = app.projection("d", topic=TOPIC, db=db, tables=[counts])
    with pytest.raises(ConfigError, match="declared twice"):
        app.projection("d", topic=TOPIC, db=db, tables=[counts])

    async def not_plain(payload: object, ctx: object) -> None: ...

    with pytest.raises(ConfigError, match="plain def"):
        board.on("task.created")(not_plain)
    with pytest.raises(ConfigError, match="needs event types"):
        board.on()
    with pytest.raises(InvalidEventType):
        board.on("TaskCreated")
    app.subscriber(TOPIC, group="e")(lambda p: None)
    taken = app.projection("e", topic=TOPIC, db=db, tables=[counts])
    with pytest.raises(ConfigError, match="projection 'e'"):
        taken.on("task.created")(lambda p, ctx: None)
