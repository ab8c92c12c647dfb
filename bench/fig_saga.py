"""A saga step's cost against a plain inbox handler, in the same run on the same log.

Each run pre-publishes ``task.created`` and ``task.completed`` for ``KEYS`` keys (2 x
KEYS events) to a fresh SQLite log, starts a Worker and times it until every event is
handled, with its effects committed:

- ``inbox``: a plain ``def`` handler with an Inbox on a SQLite file that writes one row
  per event through ``ctx.session`` (the baseline: an exactly-once effect);
- ``saga``: the saga of ``tests/sagas/helpers.py`` on the same kind of file: the start
  writes the instance, a history row, a deadline row and its outbox row; the completion
  updates the instance (``WHERE version``), cancels the deadline (its row and its
  outbox row) and writes a history row.

Runs alternate (baseline, saga) ``ROUNDS`` times; the ratio is saga / baseline
events per second, per round. ``python -m bench.fig_saga`` prints every round.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.sagas.helpers import TOPIC, add_saga
from tidings import Context, Inbox, Tidings
from tidings.testing import running

KEYS = 1000
ROUNDS = 3
TIMEOUT = 300.0  # seconds per run, at most

rows_md = sa.MetaData()
rows = sa.Table("effects", rows_md, sa.Column("n", sa.Integer, primary_key=True),
                sa.Column("event_id", sa.String(64)))  # fmt: skip


async def _publish(app: Tidings) -> None:
    events = []
    for i in range(KEYS):
        key = f"k{i}"
        events.append(app.build({"task_id": key, "due_in": 3600}, type="task.created", subject=key))
        events.append(app.build({"task_id": key}, type="task.completed", subject=key))
    await app.publish_events(TOPIC, events)


async def _timed(app: Tidings, done: Any) -> float:
    async with app:
        await _publish(app)
        start = time.perf_counter()
        async with running(app):
            deadline = start + TIMEOUT
            while not done():
                if time.perf_counter() > deadline:
                    raise TimeoutError("not done in time")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
    return elapsed


async def inbox_run(folder: Path) -> float:
    app = Tidings(f"sqlite:///{folder / 'log.db'}?partitions=4", service="bench")
    app.topic(TOPIC, partitions=4)
    db = f"sqlite:///{folder / 'app.db'}"
    engine = sa.create_engine(db)
    rows_md.create_all(engine)
    inbox = Inbox(db)

    @app.subscriber(TOPIC, group="plain", inbox=inbox)
    def effect(data: dict[str, Any], ctx: Context) -> None:
        ctx.session.execute(rows.insert().values(event_id=ctx.id))

    def done() -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(rows)).scalar() == 2 * KEYS

    try:
        return await _timed(app, done)
    finally:
        await inbox.close()
        engine.dispose()


async def saga_run(folder: Path) -> float:
    app = Tidings(f"sqlite:///{folder / 'log.db'}?partitions=4", service="bench")
    app.topic(TOPIC, partitions=4)
    db = f"sqlite:///{folder / 'app.db'}"
    saga = add_saga(app, db)
    saga.create_tables()

    engine = sa.create_engine(db)
    finished = sa.text("SELECT count(*) FROM tidings_sagas WHERE status = 'finished'")

    def done() -> bool:  # the same kind of look as the baseline's
        with engine.connect() as conn:
            return conn.execute(finished).scalar() == KEYS

    try:
        return await _timed(app, done)
    finally:
        await saga.close()
        engine.dispose()


async def main() -> None:
    ratios = []
    for round_ in range(1, ROUNDS + 1):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            base = 2 * KEYS / await inbox_run(Path(a))
            saga = 2 * KEYS / await saga_run(Path(b))
        ratios.append(saga / base)
        print(f"round {round_}: inbox {base:,.0f} events/s, saga {saga:,.0f} events/s, "
              f"saga/inbox {saga / base:.2f}")  # fmt: skip
    print(f"median saga/inbox: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
