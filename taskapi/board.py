"""The task board: how many tasks each assignee has, per status, as a projection of
``task-events`` (``tidings.projections``) in its own database (``TASKAPI_BOARD_DB``,
default ``<data>/board.db``).

The ``task-board`` service keeps it (``taskapi service task-board``); the API serves
it (``GET /board``); ``taskapi board rebuild`` rebuilds it from the log while both go
on, and ``taskapi board status`` shows where it stands. Two tables: ``board_tasks``,
each task's assignee and status (what an event moves a task from), and ``board``, the
counts. Unassigned tasks count under the assignee ``""`` (``null`` in the API).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from taskapi.events import TOPIC, TaskAssigned, TaskCompleted, TaskCreated, TaskDeleted
from taskapi.settings import Settings
from tidings import Context, Tidings
from tidings.projections import Projection

__all__ = ["NAME", "board_rows", "declare", "main", "metadata"]

NAME = "task-board"  # the projection, its group and its service

metadata = sa.MetaData()
board_tasks = sa.Table(
    "board_tasks",
    metadata,
    sa.Column("task_id", sa.String(), primary_key=True),
    sa.Column("assignee", sa.String(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
)
board = sa.Table(
    "board",
    metadata,
    sa.Column("assignee", sa.String(), primary_key=True),
    sa.Column("status", sa.String(), primary_key=True),
    sa.Column("tasks", sa.Integer(), nullable=False),
)


def _move(session: Any, task_id: str, to: tuple[str, str] | None) -> tuple[str, str] | None:
    """Move task ``task_id`` to ``(assignee, status)`` on the board (None: off it);
    return where it was."""
    t, b = board_tasks.c, board.c
    row = session.execute(sa.select(t.assignee, t.status).where(t.task_id == task_id)).first()
    was = None if row is None else (row.assignee, row.status)
    if was is not None:
        where = (b.assignee == was[0]) & (b.status == was[1])
        session.execute(sa.update(board).where(where).values(tasks=b.tasks - 1))
        session.execute(sa.delete(board).where(where & (b.tasks <= 0)))
        session.execute(sa.delete(board_tasks).where(t.task_id == task_id))
    if to is not None:
        session.execute(
            sa.insert(board_tasks).values(task_id=task_id, assignee=to[0], status=to[1])
        )
        dialect = session.get_bind().dialect.name
        insert: Any = (sqlite if dialect == "sqlite" else postgresql).insert(board)
        session.execute(
            insert.values(assignee=to[0], status=to[1], tasks=1).on_conflict_do_update(
                index_elements=["assignee", "status"], set_={"tasks": b.tasks + 1}
            )
        )
    return was


def declare(app: Tidings, settings: Settings) -> Projection:
    """The ``task-board`` projection on ``app``, with its handlers."""
    projection = app.projection(
        NAME, topic=TOPIC, db=settings.board_url, tables=[board_tasks, board]
    )

    @projection.on("task.created")
    def created(event: TaskCreated, ctx: Context) -> None:
        _move(ctx.session, event.task_id, (event.assignee or "", "open"))

    @projection.on("task.assigned")
    def assigned(event: TaskAssigned, ctx: Context) -> None:
        t = board_tasks.c
        status = ctx.session.execute(sa.select(t.status).where(t.task_id == event.task_id)).scalar()
        _move(ctx.session, event.task_id, (event.assignee or "", status or "open"))

    @projection.on("task.completed")
    def completed(event: TaskCompleted, ctx: Context) -> None:
        _move(ctx.session, event.task_id, (event.assignee or "", "completed"))

    @projection.on("task.deleted")
    def deleted(event: TaskDeleted, ctx: Context) -> None:
        _move(ctx.session, event.task_id, None)

    return projection


def board_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    """The board as rows ``{assignee, status, tasks}`` (assignee None: unassigned),
    read in one statement: a board being rebuilt is seen whole, old or new."""
    b = board.c
    query = sa.select(b.assignee, b.status, b.tasks).order_by(b.assignee, b.status)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.OperationalError:  # SQLite: no table yet, the service never started
        return []
    except sa.exc.ProgrammingError:  # PostgreSQL: the same
        return []
    return [{"assignee": a or None, "status": s, "tasks": n} for a, s, n in rows]


def main(argv: Sequence[str]) -> int:
    """``taskapi board rebuild|status [--data DIR] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="taskapi board",
        description="Rebuild the task board from the log while it serves, or show where it stands.",
    )
    parser.add_argument("action", choices=("rebuild", "status"))
    parser.add_argument("--data", help="the data folder (default $TASKAPI_DATA or ./taskapi-data)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.data).ensure()
    out = asyncio.run(_run(args.action, settings))
    if args.json:
        print(json.dumps(out, indent=2))
    elif args.action == "rebuild":
        print(f"task board rebuilt: {out['applied']} events applied in {out['seconds']} s")
    else:
        print(f"task board: lag {out['lag']}" + (", rebuilding" if out["rebuilding"] else ""))
    return 0


async def board_status(settings: Settings) -> dict[str, Any]:
    """What ``taskapi board status --json`` prints: the projection's lag per partition,
    and whether a rebuild runs."""
    return await _run("status", settings)


async def _run(action: str, settings: Settings) -> dict[str, Any]:
    from taskapi.services import build

    async with contextlib.AsyncExitStack() as stack:
        app = build(NAME, settings, stack)
        projection = app.projections[NAME]
        async with app:
            if action == "rebuild":
                return (await projection.rebuild()).to_json()
            return (await projection.status()).to_json()
