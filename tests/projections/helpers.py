"""A counting projection for the tests: ``task.created`` per assignee in ``counts``;
every event it handles is counted, so at any moment the counts' total equals the
number of events applied, which the positions say (offsets on SQLite are dense)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tidings import Context, Tidings
from tidings.projections import Projection

TOPIC = "task-events"
PARTITIONS = 3
ASSIGNEES = ["ann", "bob", "cy", "dee", "eve"]

metadata = sa.MetaData()
counts = sa.Table(
    "counts",
    metadata,
    sa.Column("assignee", sa.String(), primary_key=True),
    sa.Column("n", sa.Integer(), nullable=False),
)


@dataclass
class Board:
    app: Tidings
    projection: Projection
    calls: list[str] = field(default_factory=list)  # event ids, in call order
    fail_on: set[str] = field(default_factory=set)  # task ids whose event raises after writing
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold: threading.Event | None = None  # if set: handlers wait for it (30 s at most)


def count_statement(dialect: str, assignee: str) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = sqlite.insert(counts) if dialect == "sqlite" else postgresql.insert(counts)
    return insert.values(assignee=assignee, n=1).on_conflict_do_update(
        index_elements=["assignee"], set_={"n": counts.c.n + 1}
    )


def board_app(log: str, db: str, name: str = "board") -> Board:
    app = Tidings(log, service="test")
    projection = app.projection(name, topic=TOPIC, db=db, tables=[counts])
    board = Board(app, projection)
    dialect = sa.make_url(db).get_backend_name()

    @projection.on("task.created")
    def count(payload: dict[str, Any], ctx: Context) -> None:
        ctx.session.execute(count_statement(dialect, payload["assignee"]))
        with board.lock:
            board.calls.append(ctx.id)
        if board.hold is not None:
            board.hold.wait(30)
        if payload["task_id"] in board.fail_on:
            raise RuntimeError(f"failing on {payload['task_id']}")

    return board


def created(i: int) -> dict[str, Any]:
    return {"task_id": f"t{i}", "assignee": ASSIGNEES[i % len(ASSIGNEES)]}


async def publish(app: Tidings, start: int, stop: int) -> None:
    await app.publish_many(
        TOPIC, [created(i) for i in range(start, stop)], type="task.created",
        subject=lambda p: p["task_id"],
    )  # fmt: skip


def expected(n: int) -> dict[str, int]:
    """The counts of events 0..n-1, from scratch."""
    out: dict[str, int] = {}
    for i in range(n):
        a = ASSIGNEES[i % len(ASSIGNEES)]
        out[a] = out.get(a, 0) + 1
    return out


def read_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {a: n for a, n in conn.execute(sa.select(counts.c.assignee, counts.c.n))}


def snapshot(engine: sa.Engine, name: str = "board") -> tuple[int, int]:
    """In one statement (one snapshot, on either database): the counts' total and the
    events the positions say were applied (the sum of last offset + 1)."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT (SELECT COALESCE(SUM(n), 0) FROM counts), "
            "(SELECT COALESCE(SUM(last_offset + 1), 0) FROM tidings_projection_positions "
            f"WHERE projection = '{name}')"
        ).one()
    return int(row[0]), int(row[1])
