"""The inbox on the hot path: handled events/s with an inbox on SQLite against plain
handling, measured in the same run on the same log.

Every run pre-publishes the events to a fresh SQLite log, starts a Worker and times it
from its start to the n-th handler call, and with an inbox on until its n marks are
committed (read from the marks table after that call, so that the inbox's commits are
inside the time; the handler counts its calls, as in ``fig_e2e``: a middleware that
counted them would take the handler out of the worker's runs). The CPU time of the
process (all threads) over the same span, per event, is kept beside each figure. The
inbox's marks go to another SQLite file, opened from a URL (WAL, ``synchronous=FULL``:
an fsync per commit, as an application database would). Variants:

- ``ids``: a handler without a database (the inbox as a durable store of ids; marks of
  deliveries finishing together share a transaction);
- ``session``: a handler that writes one row through ``ctx.session``, committed with
  the mark, a lane's run of events in one transaction (``Inbox(batch=...)``, decision
  0014);

each with an ``async def`` handler (AsyncSession, aiosqlite) and a plain ``def``
handler (Session, run in threads). The baseline is the same handler without an inbox,
through the same middleware list. ``inbox_passthrough`` is plain handling with the
InboxMiddleware in the chain against a chain without it: the cost for subscribers that
have no inbox.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from bench._common import EVENT_TYPE, TOPIC, Deadline, Figure, cpu_probe, log, median, payload
from bench._setup import LOOP_SECONDS, Config, Workdir, new_app
from tidings import Context, Worker
from tidings.inbox import DEFAULT_BATCH, Inbox
from tidings.middleware import Middleware, default_middleware
from tidings.middleware.inbox import InboxMiddleware

_rows = sa.MetaData()
_sent = sa.Table(
    "sent",
    _rows,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String, nullable=False),
)


# Seconds between reads of the marks table once the n-th call has been made.
MARKS_POLL = 0.002


def _chain(with_inbox_middleware: bool) -> list[Middleware]:
    chain = default_middleware()
    has = any(isinstance(m, InboxMiddleware) for m in chain)
    if with_inbox_middleware and not has:
        chain.append(InboxMiddleware())  # innermost, inside Retry
    if not with_inbox_middleware and has:
        chain = [m for m in chain if not isinstance(m, InboxMiddleware)]
    return chain


def _handler(mode: str, sync: bool, calls: Iterator[int], n: int, last: Callable[[], None]) -> Any:
    """The variant's handler; it calls ``last()`` (on the loop) at its n-th call."""
    loop = asyncio.get_running_loop()

    def counted() -> None:
        if next(calls) == n:  # next() on a count is atomic under the GIL
            loop.call_soon_threadsafe(last)

    if mode == "ids":
        if sync:

            def handle_ids(data: Any) -> None:
                counted()

            return handle_ids

        async def handle_ids_async(data: Any) -> None:
            counted()

        return handle_ids_async
    if sync:

        def handle_session(data: Any, ctx: Context) -> None:
            if ctx.session is not None:
                ctx.session.execute(_sent.insert().values(event_id=ctx.id))
            counted()

        return handle_session

    async def handle_session_async(data: Any, ctx: Context) -> None:
        if ctx.session is not None:
            await ctx.session.execute(_sent.insert().values(event_id=ctx.id))
        counted()

    return handle_session_async


async def _all_marked(box: Inbox, db_url: str, n: int, deadline: Deadline) -> None:
    """Wait until ``n`` marks are committed in ``box``'s table."""
    engine = sa.create_engine(db_url)
    count = sa.select(sa.func.count()).select_from(box.table)
    try:
        with engine.connect() as conn:
            while conn.execute(count).scalar_one() < n:
                conn.rollback()  # a fresh snapshot at the next read
                if deadline.over():
                    raise RuntimeError(f"{n} marks were not committed in time")
                await asyncio.sleep(MARKS_POLL)
    finally:
        engine.dispose()


async def inbox_run(
    folder: str,
    n: int,
    synchronous: str,
    *,
    mode: str,
    sync: bool,
    inbox: bool,
    chain_has_inbox: bool = True,
    timeout: float = LOOP_SECONDS,
    db_url: str | None = None,
    cpu: list[float] | None = None,
) -> float:
    """Handled events/s of one group over ``n`` pre-published events; the CPU seconds
    per event are appended to ``cpu``. ``db_url``: the inbox's database (default: a
    SQLite file in ``folder``)."""
    app = new_app(os.path.join(folder, "events.db"), synchronous)
    db_url = db_url or f"sqlite:///{os.path.join(folder, 'app.db')}"
    box = Inbox(db_url) if inbox else None
    if mode == "session":
        engine = sa.create_engine(db_url)
        _rows.create_all(engine)
        engine.dispose()
    if box is not None:
        box.create_table()
    called = asyncio.Event()
    app.subscriber(TOPIC, group="g", inbox=box)(
        _handler(mode, sync, itertools.count(1), n, called.set)
    )
    deadline = Deadline(timeout)
    try:
        async with app:
            for i in range(0, n, 1000):
                if deadline.over():
                    raise RuntimeError(f"publishing {n} events took over {timeout} s")
                chunk = [payload(k) for k in range(i, min(i + 1000, n))]
                await app.publish_many(TOPIC, chunk, type=EVENT_TYPE)
            worker = Worker(app, middleware=_chain(chain_has_inbox))
            stop = asyncio.Event()
            start, cpu_start = time.perf_counter(), time.process_time()
            running = asyncio.get_running_loop().create_task(worker.run(stop))
            try:
                await asyncio.wait_for(called.wait(), timeout)
                if box is not None:
                    await _all_marked(box, db_url, n, deadline)
                seconds = time.perf_counter() - start
                if cpu is not None:
                    cpu.append((time.process_time() - cpu_start) / n)
            finally:
                stop.set()
                await asyncio.wait_for(running, 60)
    finally:
        if box is not None:
            await box.close()
    if inbox and worker.stats.duplicates:
        raise RuntimeError(f"{worker.stats.duplicates} duplicates in a run without any")
    return n / seconds


async def fig_inbox(cfg: Config, work: Workdir) -> list[Figure]:
    n = 2000 if cfg.quick else 5000
    rounds = cfg.e2e_rounds
    variants = [("ids", False), ("ids", True), ("session", False), ("session", True)]
    got: dict[tuple[str, bool, bool], list[float]] = {}
    cpu: dict[tuple[str, bool, bool], list[float]] = {}
    passthrough: list[float] = []
    no_middleware: list[float] = []
    probes = []
    for r in range(rounds):
        for mode, sync in variants:
            for inbox in (False, True):  # interleaved: a busy spell hits both alike
                with work.folder(f"inbox-{mode}-{sync}-{inbox}") as d:
                    rate = await inbox_run(
                        d, n, cfg.synchronous, mode=mode, sync=sync, inbox=inbox,
                        cpu=cpu.setdefault((mode, sync, inbox), []),
                    )  # fmt: skip
                got.setdefault((mode, sync, inbox), []).append(rate)
        with work.folder("inbox-passthrough") as d:
            passthrough.append(
                await inbox_run(d, n, cfg.synchronous, mode="ids", sync=False, inbox=False)
            )
        with work.folder("inbox-no-middleware") as d:
            bare = await inbox_run(
                d, n, cfg.synchronous, mode="ids", sync=False, inbox=False, chain_has_inbox=False
            )
            no_middleware.append(bare)
        probes.append(round(cpu_probe(), 1))
        log(
            f"  round {r + 1}: "
            + "; ".join(
                f"{mode} {'def' if sync else 'async'} {got[(mode, sync, True)][-1]:,.0f}/s "
                f"{cpu[(mode, sync, True)][-1] * 1e6:.0f} us CPU/event "
                f"(plain {got[(mode, sync, False)][-1]:,.0f}/s)"
                for mode, sync in variants
            )
            + f"; plain without InboxMiddleware {no_middleware[-1]:,.0f}/s"
        )
    common = {
        "events": n,
        "rounds": rounds,
        "log_synchronous": cfg.synchronous,
        "inbox": "SQLite file from a URL: WAL, synchronous=FULL; with a session, a "
        f"lane's run of events per transaction (Inbox(batch={DEFAULT_BATCH}))",
        "cpu_probe_ns": probes,
    }
    what = {
        "ids": "handler without a database: the inbox as a durable id store",
        "session": "handler writes one row through ctx.session, committed with the mark",
    }
    figures = []
    for mode, sync in variants:
        name = f"inbox_{mode}_{'def' if sync else 'async'}"
        figures.append(
            Figure(
                name,
                median(got[(mode, sync, True)]),
                "events/s",
                median(got[(mode, sync, False)]),
                "the same handler without an inbox, same middleware",
                None,
                {
                    **common,
                    "handler": what[mode],
                    "session": "Session in threads" if sync else "AsyncSession (aiosqlite)",
                    "rounds_inbox": [round(x) for x in got[(mode, sync, True)]],
                    "rounds_plain": [round(x) for x in got[(mode, sync, False)]],
                    "cpu_us_per_event_inbox": [round(x * 1e6, 1) for x in cpu[(mode, sync, True)]],
                    "cpu_us_per_event_plain": [round(x * 1e6, 1) for x in cpu[(mode, sync, False)]],
                },
            )
        )
    figures.append(
        Figure(
            "inbox_passthrough",
            median(passthrough),
            "events/s",
            median(no_middleware),
            "plain handling without InboxMiddleware in the chain",
            None,
            {**common, "what": "a subscriber without inbox=, InboxMiddleware in the chain"},
        )
    )
    return figures
