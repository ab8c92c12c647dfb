"""Figure 3 and the litequeue comparison: publish -> handler throughput."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bench._common import (
    EVENT_TYPE,
    PARTITIONS,
    TOPIC,
    Deadline,
    Figure,
    cpu_probe,
    log,
    median,
    payload,
    raw_connect,
)
from bench._setup import LOOP_SECONDS, Config, Workdir, encoded_events, new_app
from tidings import Worker

# -- figure 3 (and 5): publish -> handler throughput -----------------------------------


def _counting_handler(
    counter: Iterator[int],
    n: int,
    group: str,
    finish: Callable[[str], None],
    loop: asyncio.AbstractEventLoop | None,
) -> Callable[[Any], Any]:
    """A handler that counts its calls and calls ``finish(group)`` at the n-th; a plain
    ``def`` (run in a thread by the Worker) when ``loop`` is given, else ``async def``."""
    if loop is not None:

        def count(data: Any) -> None:
            if next(counter) == n:  # next() on a count is atomic under the GIL
                loop.call_soon_threadsafe(finish, group)

        return count

    async def count_async(data: Any) -> None:
        if next(counter) == n:
            finish(group)

    return count_async


@dataclass
class E2EResult:
    publish_seconds: float  # pre-publishing (or, live, publishing while handling)
    group_seconds: dict[str, float]  # from Worker start to the group's last handler call
    cpu_seconds: float = 0.0  # the process's CPU time (all threads) over the same span

    def rates(self, n: int) -> dict[str, float]:
        return {g: n / s for g, s in self.group_seconds.items()}


async def tidings_end_to_end(
    path: str,
    n: int,
    groups: list[str],
    synchronous: str,
    *,
    sync_handler: bool = False,
    live: bool = False,
    metrics: str | None = None,
    tracing: Any = None,
    timeout: float = 120.0,
) -> E2EResult:
    """Publish ``n`` events (``publish_many``, 1000 at a time), then run a Worker with one
    subscriber per group until each group's handler has seen all ``n``.

    ``live``: the Worker starts first and the events are published while it runs; the
    group times then run from the first publish to the last handler call.
    ``metrics``: ``"timed"``, the handlers timed as tidings.metrics has them
    (``Worker.time_handlers``), never scraped; ``"scraped"``, :class:`WorkerMetrics` on
    and its exposition built every second from the start, as a Prometheus would (each
    exposition's seconds appended to :data:`SCRAPE_SECONDS`).
    ``tracing``: a :class:`tidings.otel.Tracing` for the app; each event is then built
    in a span of its own (a request's, as an HTTP edge has), so that its sampler
    decides per event (bench/fig_tracing.py).
    """
    loop = asyncio.get_running_loop()
    app = new_app(path, synchronous, tracing=tracing or False)
    seen = {g: itertools.count(1) for g in groups}
    finished: dict[str, float] = {}
    all_done = asyncio.Event()

    def finish(group: str) -> None:
        finished[group] = time.perf_counter()
        if len(finished) == len(groups):
            all_done.set()

    for group in groups:
        app.subscriber(TOPIC, group=group)(
            _counting_handler(seen[group], n, group, finish, loop if sync_handler else None)
        )

    chunks = [[payload(k) for k in range(i, min(i + 1000, n))] for i in range(0, n, 1000)]

    async def publish_all() -> float:
        deadline = Deadline(LOOP_SECONDS)
        begin = time.perf_counter()
        for chunk in chunks:
            if deadline.over():
                raise RuntimeError(f"publishing {n} events took over {LOOP_SECONDS} s")
            await app.publish_many(TOPIC, _in_requests(app, chunk), type=EVENT_TYPE)
        return time.perf_counter() - begin

    async with app:
        publish_seconds = 0.0 if live else await publish_all()
        worker = Worker(app)
        stop = asyncio.Event()
        if metrics == "timed":
            worker.time_handlers()
        scraping = None
        if metrics == "scraped":
            scraping = loop.create_task(_scrape_every_second(worker, stop))
        start, cpu_start = time.perf_counter(), time.process_time()
        running = loop.create_task(worker.run(stop))
        try:
            if live:
                publish_seconds = await publish_all()
            await asyncio.wait_for(all_done.wait(), timeout)
            cpu = time.process_time() - cpu_start
        finally:
            stop.set()
            await asyncio.wait_for(running, 60)
            if scraping is not None:
                await scraping
    return E2EResult(publish_seconds, {g: t - start for g, t in finished.items()}, cpu)


def _in_requests(app: Any, chunk: list[Any]) -> list[Any]:
    """The payloads as they are; with tracing, each built into an event in a span of
    its own (a request's), its creation context."""
    if app.tracing is None:
        return chunk
    tracer = app.tracing.tracer
    events = []
    for data in chunk:
        with tracer.start_as_current_span("request"):
            events.append(app.build(data, type=EVENT_TYPE))
    return events


SCRAPE_SECONDS: list[float] = []


async def _scrape_every_second(worker: Worker, stop: asyncio.Event) -> None:
    """tidings.metrics on ``worker`` (made before it runs), its exposition built every
    second until ``stop``: what ``tidings run --metrics-port`` costs under a scraper."""
    from tidings.metrics import WorkerMetrics

    metrics = WorkerMetrics(worker)
    while not stop.is_set():
        begin = time.perf_counter()
        await metrics.exposition()
        SCRAPE_SECONDS.append(time.perf_counter() - begin)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def raw_consume(path: str, n: int, group: str, synchronous: str, timeout: float = 60) -> float:
    """Raw sqlite3 reading the log tidings wrote, as a hand-written consumer would:
    500 rows per query from each partition in turn, ``orjson.loads`` of each value, a
    call to a handler, and its position saved every 50 ms (the Worker's
    ``commit_interval``) in one transaction. One thread, no asyncio."""
    conn = raw_connect(path, synchronous)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_positions (grp TEXT NOT NULL, partition INTEGER"
            " NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY (grp, partition)) WITHOUT ROWID"
        )
        (tid,) = conn.execute("SELECT id FROM topics WHERE name=?", (TOPIC,)).fetchone()
        positions = dict.fromkeys(range(PARTITIONS), 0)
        handled = 0
        sink: list[Any] = []

        def handle(doc: Any) -> None:
            sink.append(doc["data"])
            sink.clear()

        def save() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO raw_positions VALUES (?,?,?) ON CONFLICT(grp, partition)"
                " DO UPDATE SET offset=excluded.offset",
                [(group, p, o) for p, o in positions.items()],
            )
            conn.execute("COMMIT")

        deadline = Deadline(timeout)
        start = last_save = time.perf_counter()
        while handled < n and not deadline.over():
            for p in range(PARTITIONS):
                rows = conn.execute(
                    "SELECT offset, ts, key, value FROM events WHERE topic_id=? AND partition=?"
                    " AND offset >= ? ORDER BY offset LIMIT 500",
                    (tid, p, positions[p]),
                ).fetchall()
                for offset, _ts, _key, value in rows:
                    handle(orjson.loads(value))
                    positions[p] = offset + 1
                    handled += 1
            if time.perf_counter() - last_save >= 0.05:
                save()
                last_save = time.perf_counter()
        save()
        return handled / (time.perf_counter() - start)
    finally:
        conn.close()


async def fig_end_to_end(cfg: Config, work: Workdir) -> list[Figure]:
    n = cfg.e2e_events
    one, one_raw, three, three_raw, live, sync = [], [], [], [], [], []
    one_metrics: list[float] = []
    one_timed: list[float] = []
    sync_metrics: list[float] = []
    probes = []
    for r in range(cfg.e2e_rounds):
        with work.folder("e2e-one") as d:
            db = os.path.join(d, "events.db")
            res = await tidings_end_to_end(db, n, ["g1"], cfg.synchronous)
            one.append(res.rates(n)["g1"])
            one_raw.append(raw_consume(db, n, "raw1", cfg.synchronous))
        with work.folder("e2e-three") as d:
            db = os.path.join(d, "events.db")
            res = await tidings_end_to_end(db, n, ["g1", "g2", "g3"], cfg.synchronous)
            three.append(min(res.rates(n).values()))
            start = time.perf_counter()
            for g in ("raw1", "raw2", "raw3"):
                raw_consume(db, n, g, cfg.synchronous)
            three_raw.append(n / (time.perf_counter() - start))
        # Informational: a plain (def) handler, which the Worker hands to a thread pool,
        # a run of a partition's events per hand-off (decision 0013).
        with work.folder("e2e-sync") as d:
            res = await tidings_end_to_end(
                os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, sync_handler=True
            )
            sync.append(res.rates(n)["g1"])
        # Issue 19: the same two with tidings.metrics on and scraped every second; one
        # group with the handlers timed only (the per-event part of the cost).
        with work.folder("e2e-one-timed") as d:
            res = await tidings_end_to_end(
                os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, metrics="timed"
            )
            one_timed.append(res.rates(n)["g1"])
        with work.folder("e2e-one-metrics") as d:
            res = await tidings_end_to_end(
                os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, metrics="scraped"
            )
            one_metrics.append(res.rates(n)["g1"])
        with work.folder("e2e-sync-metrics") as d:
            res = await tidings_end_to_end(
                os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, sync_handler=True,
                metrics="scraped",
            )  # fmt: skip
            sync_metrics.append(res.rates(n)["g1"])
        probes.append(round(cpu_probe(), 1))
        log(
            f"  round {r + 1}: one group {one[-1]:,.0f}/s (raw {one_raw[-1]:,.0f}/s); "
            f"three groups, slowest {three[-1]:,.0f}/s each (raw {three_raw[-1]:,.0f}/s); "
            f"one group, def handler {sync[-1]:,.0f}/s; timed: one group "
            f"{one_timed[-1]:,.0f}/s ({one_timed[-1] / one[-1]:.3f}); with metrics: one group "
            f"{one_metrics[-1]:,.0f}/s ({one_metrics[-1] / one[-1]:.3f}), def handler "
            f"{sync_metrics[-1]:,.0f}/s ({sync_metrics[-1] / sync[-1]:.3f})"
        )
    # Informational: the same with publishing while the Worker runs.
    with work.folder("e2e-live") as d:
        res = await tidings_end_to_end(
            os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, live=True
        )
        live.append(res.rates(n)["g1"])
    log(f"  live one group {live[-1]:,.0f}/s")
    common = {"events": n, "synchronous": cfg.synchronous, "mode": "pre-published, then drained"}
    per_round = {"cpu_probe_ns": probes}
    metrics_note = "tidings.metrics on (handlers timed), its exposition built every second"
    scrapes = sorted(SCRAPE_SECONDS)
    log(
        f"  {len(scrapes)} expositions: median {median(scrapes) * 1000:.1f} ms, "
        f"max {scrapes[-1] * 1000:.1f} ms"
    )

    def on_off(name: str, on: list[float], off: list[float], off_name: str, **about: Any) -> Figure:
        """A figure with metrics on, against the same rounds with them off."""
        return Figure(
            name, median(on), "events/s", median(off), f"{off_name}, same rounds", None,
            {
                **common, **about,
                "rounds_on": [round(x) for x in on],
                "rounds_off": [round(x) for x in off],
                "ratios": [round(a / b, 3) for a, b in zip(on, off, strict=True)],
            },
        )  # fmt: skip

    return [
        on_off(
            "e2e_one_group_timed",
            one_timed,
            one,
            "e2e_one_group (not timed)",
            metrics="Worker.time_handlers() only, never scraped",
        ),
        on_off(
            "e2e_one_group_metrics",
            one_metrics,
            one,
            "e2e_one_group (metrics off)",
            metrics=metrics_note,
            exposition_ms_median=round(median(scrapes) * 1000, 2),
        ),
        on_off(
            "e2e_one_group_def_handler_metrics",
            sync_metrics,
            sync,
            "e2e_one_group_def_handler (metrics off)",
            metrics=metrics_note,
        ),
        Figure(
            "e2e_one_group",
            median(one),
            "events/s",
            median(one_raw),
            "raw sqlite3 consumer loop on the same file",
            ("value", ">=", 30_000),
            {**common, "rounds_tidings": [round(x) for x in one], **per_round},
        ),
        Figure(
            "e2e_three_groups",
            median(three),
            "events/s per group",
            median(three_raw),
            "raw consumer loop run for three groups in one thread",
            ("value", ">=", 20_000),
            {
                **common,
                "rounds_tidings": [round(x) for x in three],
                "value_is": "slowest group",
                **per_round,
            },
        ),
        Figure(
            "e2e_one_group_live",
            median(live),
            "events/s",
            median(one),
            "e2e_one_group (pre-published)",
            None,
            {**common, "mode": "publish_many while the Worker runs, first publish to last handler"},
        ),
        Figure(
            "e2e_one_group_def_handler",
            median(sync),
            "events/s",
            median(one),
            "e2e_one_group (async def handler)",
            None,
            {
                **common,
                "handler": "plain def, run by the Worker in a thread pool, in runs",
                "rounds_tidings": [round(x) for x in sync],
                "rounds_async": [round(x) for x in one],
            },
        ),
    ]


# -- figure 5: against litequeue -------------------------------------------------------


def litequeue_end_to_end(path: str, values: list[str], timeout: float) -> dict[str, float]:
    """litequeue: ``put`` every message (1000 per transaction, through its own
    ``transaction()``), then one consumer ``pop`` + ``done`` each until empty."""
    from litequeue import LiteQueue  # type: ignore[import-untyped]

    q = LiteQueue(path)  # its defaults: WAL, synchronous=NORMAL
    try:
        sync = q.conn.execute("PRAGMA synchronous").fetchone()[0]
        deadline = Deadline(timeout)
        start = time.perf_counter()
        for i in range(0, len(values), 1000):
            if deadline.over():
                raise RuntimeError(f"litequeue put of {len(values)} took over {timeout} s")
            with q.transaction():
                for value in values[i : i + 1000]:
                    q.put(value)
        put = time.perf_counter() - start
        deadline = Deadline(timeout)
        handled = 0
        start = time.perf_counter()
        while handled < len(values) and not deadline.over():
            message = q.pop()
            if message is None:
                break
            orjson.loads(message.data)  # the same work a consumer of the envelope does
            q.done(message.message_id)
            handled += 1
        drain = time.perf_counter() - start
        return {"put_s": put, "drain_s": drain, "handled": handled, "synchronous": sync}
    finally:
        q.close()


async def fig_litequeue(cfg: Config, work: Workdir) -> list[Figure]:
    try:
        import litequeue  # noqa: F401
    except ImportError:
        log("  litequeue is not installed (pip install litequeue): skipped")
        return []
    n = cfg.litequeue_events
    sync = "NORMAL"  # litequeue's own setting; tidings set to match
    values = [v.decode() for v in encoded_events(n)]
    with work.folder("litequeue") as d:
        lq = await asyncio.to_thread(litequeue_end_to_end, os.path.join(d, "q.db"), values, 300)
    with work.folder("litequeue-tidings") as d:
        res = await tidings_end_to_end(os.path.join(d, "events.db"), n, ["g1"], sync)
    ours = n / (res.publish_seconds + res.group_seconds["g1"])
    theirs = lq["handled"] / (lq["put_s"] + lq["drain_s"])
    log(
        f"  tidings {ours:,.0f}/s (put {res.publish_seconds:.2f}s, drain "
        f"{res.group_seconds['g1']:.2f}s); litequeue {theirs:,.0f}/s (put {lq['put_s']:.2f}s, "
        f"drain {lq['drain_s']:.2f}s, {lq['handled']} handled)"
    )
    return [
        Figure(
            "vs_litequeue_e2e",
            ours,
            "events/s",
            theirs,
            "litequeue 0.9: put (1000/tx), then pop+done each, one consumer",
            ("ratio", ">=", 5),
            {
                "events": n,
                "synchronous": f"both {sync} (litequeue sets NORMAL itself)",
                "rate": "N / (put time + drain time)",
                "tidings_put_s": round(res.publish_seconds, 3),
                "tidings_drain_s": round(res.group_seconds["g1"], 3),
                "litequeue_put_s": round(lq["put_s"], 3),
                "litequeue_drain_s": round(lq["drain_s"], 3),
                "litequeue_handled": lq["handled"],
                "litequeue_sqlite_synchronous": lq["synchronous"],
            },
        )
    ]
