"""Projections: events/s applied live by a projection, and by its rebuild, against an
inbox-backed handler doing the same write, measured in the same run on the same log.

Each run pre-publishes N ``task.created`` events (4 partitions) to a fresh SQLite log
and times a Worker from its start until the N-th event's write is committed. Every
variant writes the same upsert (a count per assignee) to its own SQLite file (WAL,
``synchronous=FULL``):

- ``inbox_batch1``: a plain ``def`` subscriber with ``Inbox(batch=1)``: a transaction
  per event with its mark: the same shape as a projection's (the baseline);
- ``inbox_batched``: the same with the default ``Inbox(batch=500)`` (a lane's run in one
  transaction, decision 0014): what batching would buy;
- ``projection``: ``app.projection(...)``: a transaction per event with its position;
- ``rebuild``: ``Projection.rebuild()`` of the N events (batches of 500, into a shadow
  file with ``synchronous=OFF``, then the swap).

``python -m bench.fig_projections [N] [RUNS]`` prints each run and the medians.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from tidings import Context, Inbox, Tidings, Worker
from tidings.testing import eventually

TOPIC = "task-events"
PARTITIONS = 4
md = sa.MetaData()
counts = sa.Table(
    "counts", md, sa.Column("assignee", sa.String, primary_key=True), sa.Column("n", sa.Integer)
)


def _upsert(assignee: str) -> Any:
    return (
        sqlite.insert(counts)
        .values(assignee=assignee, n=1)
        .on_conflict_do_update(index_elements=["assignee"], set_={"n": counts.c.n + 1})
    )


def _total(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        try:
            return int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.sum(counts.c.n), 0))).scalar() or 0
            )
        except sa.exc.OperationalError:
            return 0


async def _publish(log: str, n: int) -> None:
    async with Tidings(log, service="bench") as app:
        await app.transport.create_topic(TOPIC, partitions=PARTITIONS)
        for start in range(0, n, 500):
            rows = [{"task_id": f"t{i}", "assignee": f"a{i % 7}"} for i in range(start, n)][:500]
            await app.publish_many(TOPIC, rows, type="task.created", subject=lambda p: p["task_id"])


async def _timed(app: Tidings, engine: sa.Engine, n: int) -> float:
    worker = Worker(app, commit_interval=0.05)
    stop = asyncio.Event()
    async with app:
        started = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        await eventually(lambda: _total(engine) >= n, timeout=600, interval=0.01)
        took = time.perf_counter() - started
        stop.set()
        await task
    return n / took


async def inbox_variant(folder: Path, n: int, batch: int) -> float:
    log = f"sqlite:///{folder / f'log-inbox{batch}.db'}"
    await _publish(log, n)
    db = f"sqlite:///{folder / f'inbox{batch}.db'}"
    engine = sa.create_engine(db)
    md.create_all(engine)
    inbox = Inbox(db, batch=batch)
    app = Tidings(log, service="bench")

    @app.subscriber(TOPIC, group="counter", types=["task.created"], inbox=inbox)
    def count(payload: dict[str, Any], ctx: Context) -> None:
        ctx.session.execute(_upsert(payload["assignee"]))

    rate = await _timed(app, engine, n)
    await inbox.close()
    engine.dispose()
    return rate


async def projection_variant(folder: Path, n: int) -> tuple[float, float]:
    log = f"sqlite:///{folder / 'log-projection.db'}"
    await _publish(log, n)
    db = f"sqlite:///{folder / 'board.db'}"
    engine = sa.create_engine(db)
    app = Tidings(log, service="bench")
    board = app.projection("board", topic=TOPIC, db=db, tables=[counts])

    @board.on("task.created")
    def count(payload: dict[str, Any], ctx: Context) -> None:
        ctx.session.execute(_upsert(payload["assignee"]))

    live = await _timed(app, engine, n)
    async with app:
        started = time.perf_counter()
        report = await board.rebuild()
        rebuild = report.applied / (time.perf_counter() - started)
    assert _total(engine) == n, _total(engine)
    board.close()
    engine.dispose()
    return live, rebuild


async def one_run(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fig-projections-") as tmp:
        folder = Path(tmp)
        out = {"inbox_batch1": await inbox_variant(folder, n, 1)}
        out["projection"], out["rebuild"] = await projection_variant(folder, n)
        out["inbox_batched"] = await inbox_variant(folder, n, 500)
    return out


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 2000
    runs = int(argv[1]) if len(argv) > 1 else 3
    results = []
    for i in range(runs):
        r = asyncio.run(one_run(n))
        results.append(r)
        print(
            f"run {i + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in r.items())
            + f"; projection/inbox_batch1 {r['projection'] / r['inbox_batch1']:.2f}"
            + f", rebuild/projection {r['rebuild'] / r['projection']:.1f}",
            flush=True,
        )  # fmt: skip
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("median: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in med.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
