"""Benchmarks of the embedded SQLite log, each figure against a baseline measured in
the same run.

    .venv/bin/python -m bench.bench_sqlite [--quick] [--only NAME[,NAME...]] [--profile]

Prints one JSON line per figure on stdout, then a summary table. Progress goes to
stderr. It reports; it never fails a build (exit status 0 whether targets pass or
not, 1 only if a benchmark itself broke). What each figure measures, and why, is in
``docs/benchmarks.md``.

Every loop is bounded by a count and by a deadline; every child process is stopped
by its PID. The SQLite files live in a fresh temporary folder on the real disk
(``--dir`` to choose where), removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import os
import platform
import pstats
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bench._common import (
    EVENT_TYPE,
    PARTITIONS,
    ROOT,
    TOPIC,
    Deadline,
    Figure,
    cpu_probe,
    events_ddl,
    log,
    median,
    now_ms,
    payload,
    per_call_us,
    percentile,
    raw_connect,
    summary_table,
)
from bench._gcwatch import GCWatch
from tidings import Tidings, Worker
from tidings.codec import decode, encode

# -- configuration ---------------------------------------------------------------------

LOOP_SECONDS = 120.0  # no single measured loop runs longer than this


@dataclass(frozen=True)
class Config:
    quick: bool
    synchronous: str = "FULL"
    rounds: int = 3  # interleaved subject/baseline rounds; the median is reported
    batch_events: int = 50_000  # figure 1, per round
    batch_size: int = 1000
    concurrent_events: int = 20_000  # figure 2, per round
    concurrent_tasks: int = 50
    raw_single_events: int = 3000  # figure 2's baseline: one fsync per event
    e2e_events: int = 50_000  # figure 3, per round
    e2e_rounds: int = 3
    latency_seconds: float = 10.0  # figure 4, measured part
    latency_warmup: int = 500
    latency_rate: int = 1000
    litequeue_events: int = 5000  # figure 5
    micro_number: int = 2000  # calls per timing; the best of micro_repeat timings
    micro_repeat: int = 25

    @classmethod
    def make(cls, quick: bool, synchronous: str) -> Config:
        if not quick:
            return cls(quick=False, synchronous=synchronous)
        return cls(
            quick=True,
            synchronous=synchronous,
            rounds=1,
            batch_events=20_000,
            concurrent_events=5000,
            raw_single_events=1000,
            e2e_events=10_000,
            e2e_rounds=1,
            latency_seconds=3.0,
            latency_warmup=300,
            litequeue_events=2000,
            micro_number=1000,
            micro_repeat=7,
        )


def sqlite_url(path: str, synchronous: str) -> str:
    return f"sqlite:///{os.path.abspath(path)}?synchronous={synchronous}"


class Workdir:
    """Fresh file names under one temporary folder; each run's files removed after."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._n = itertools.count()

    @contextlib.contextmanager
    def folder(self, name: str) -> Iterator[str]:
        path = os.path.join(self.root, f"{next(self._n):03d}-{name}")
        os.makedirs(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def encoded_events(n: int) -> list[bytes]:
    """The envelopes tidings would write for payloads 0..n-1, encoded (for baselines)."""
    app = Tidings("memory://", service="bench")
    return [encode(app.build(payload(i), type=EVENT_TYPE)) for i in range(n)]


def new_app(path: str, synchronous: str, service: str = "bench") -> Tidings:
    app = Tidings(sqlite_url(path, synchronous), service=service)
    app.topic(TOPIC, partitions=PARTITIONS)
    return app


# -- figure 1: batched publish vs raw batched inserts ----------------------------------

_INSERT = "INSERT INTO events(topic_id, partition, offset, ts, key, value) VALUES (?,?,?,?,?,?)"


def raw_batched_insert(path: str, values: list[bytes], batch: int, synchronous: str) -> float:
    """Raw sqlite3: the same encoded bytes, in a table of the same shape, ``batch`` rows
    per transaction, keyless rows spread over the partitions in turn as tidings does."""
    conn = raw_connect(path, synchronous)
    try:
        conn.execute(events_ddl())
        offsets = [0] * PARTITIONS
        deadline = Deadline(LOOP_SECONDS)
        done = 0
        start = time.perf_counter()
        for i in range(0, len(values), batch):
            if deadline.over():
                break
            ts = now_ms()
            rows = []
            for j, value in enumerate(values[i : i + batch], i):
                p = j % PARTITIONS
                rows.append((1, p, offsets[p], ts, None, value))
                offsets[p] += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
            done += len(rows)
        return done / (time.perf_counter() - start)
    finally:
        conn.close()


async def tidings_batched_publish(path: str, n: int, batch: int, synchronous: str) -> float:
    """``app.publish_many`` of ``batch`` payloads at a time (the payload dicts are made
    before the clock starts; building and encoding the envelopes is timed)."""
    batches = [[payload(k) for k in range(i, min(i + batch, n))] for i in range(0, n, batch)]
    async with new_app(path, synchronous) as app:
        deadline = Deadline(LOOP_SECONDS)
        done = 0
        start = time.perf_counter()
        for chunk in batches:
            if deadline.over():
                break
            await app.publish_many(TOPIC, chunk, type=EVENT_TYPE)
            done += len(chunk)
        return done / (time.perf_counter() - start)


async def fig_publish_batched(cfg: Config, work: Workdir) -> list[Figure]:
    values = encoded_events(cfg.batch_events)
    raw, ours, probes = [], [], []
    for r in range(cfg.rounds):
        # Alternate which side goes first, so that a drift of the disk or the host
        # during the run does not always favour the same side.
        order = ("raw", "tidings") if r % 2 == 0 else ("tidings", "raw")
        for side in order:
            with work.folder(f"batched-{side}") as d:
                db = os.path.join(d, "events.db")
                if side == "raw":
                    raw.append(raw_batched_insert(db, values, cfg.batch_size, cfg.synchronous))
                else:
                    ours.append(
                        await tidings_batched_publish(
                            db, cfg.batch_events, cfg.batch_size, cfg.synchronous
                        )
                    )
        probes.append(round(cpu_probe(), 1))
        log(f"  round {r + 1}: raw {raw[-1]:,.0f}/s, tidings {ours[-1]:,.0f}/s")
    return [
        Figure(
            "publish_many",
            median(ours),
            "events/s",
            median(raw),
            "raw sqlite3 executemany, 1000-row transactions",
            ("ratio", ">=", 1 / 3),
            {
                "events": cfg.batch_events,
                "batch": cfg.batch_size,
                "bytes_per_event": round(sum(map(len, values)) / len(values)),
                "synchronous": cfg.synchronous,
                "rounds_tidings": [round(x) for x in ours],
                "rounds_raw": [round(x) for x in raw],
                "cpu_probe_ns": probes,
            },
        )
    ]


# -- figure 2: concurrent single publishes (group commit) ------------------------------


def raw_single_row_transactions(
    path: str, values: list[bytes], synchronous: str, seconds: float
) -> float:
    """Raw sqlite3: one INSERT per transaction (autocommit), as a naive durable
    publisher would do; stops at the count or after ``seconds``."""
    conn = raw_connect(path, synchronous)
    try:
        conn.execute(events_ddl())
        deadline = Deadline(seconds)
        start = time.perf_counter()
        done = 0
        for i, value in enumerate(values):
            p = i % PARTITIONS
            conn.execute(_INSERT, (1, p, i // PARTITIONS, now_ms(), None, value))
            done += 1
            if deadline.over():
                break
        return done / (time.perf_counter() - start)
    finally:
        conn.close()


async def tidings_concurrent_publish(path: str, n: int, tasks: int, synchronous: str) -> float:
    per_task = n // tasks
    work = [[payload(t * per_task + i) for i in range(per_task)] for t in range(tasks)]
    async with new_app(path, synchronous) as app:

        async def publisher(items: list[dict[str, Any]]) -> None:
            for item in items:
                await app.publish(TOPIC, item, type=EVENT_TYPE, subject=item["task_id"])

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(publisher(w) for w in work)), 300)
        return per_task * tasks / (time.perf_counter() - start)


async def fig_publish_concurrent(cfg: Config, work: Workdir) -> list[Figure]:
    values = encoded_events(cfg.raw_single_events)
    raw, ours, probes = [], [], []
    for r in range(cfg.rounds):
        order = ("raw", "tidings") if r % 2 == 0 else ("tidings", "raw")
        for side in order:
            with work.folder(f"concurrent-{side}") as d:
                db = os.path.join(d, "events.db")
                if side == "raw":
                    raw.append(raw_single_row_transactions(db, values, cfg.synchronous, 15))
                else:
                    ours.append(
                        await tidings_concurrent_publish(
                            db, cfg.concurrent_events, cfg.concurrent_tasks, cfg.synchronous
                        )
                    )
        probes.append(round(cpu_probe(), 1))
        log(f"  round {r + 1}: raw 1 row/tx {raw[-1]:,.0f}/s, tidings {ours[-1]:,.0f}/s")
    return [
        Figure(
            f"publish_concurrent_{cfg.concurrent_tasks}",
            median(ours),
            "events/s",
            median(raw),
            f"raw sqlite3, one row per transaction, synchronous={cfg.synchronous}",
            ("value", ">=", 10_000),
            {
                "events": cfg.concurrent_events,
                "tasks": cfg.concurrent_tasks,
                "synchronous": cfg.synchronous,
                "raw_events": cfg.raw_single_events,
                "rounds_tidings": [round(x) for x in ours],
                "rounds_raw": [round(x) for x in raw],
                "cpu_probe_ns": probes,
            },
        )
    ]


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
    timeout: float = 120.0,
) -> E2EResult:
    """Publish ``n`` events (``publish_many``, 1000 at a time), then run a Worker with one
    subscriber per group until each group's handler has seen all ``n``.

    ``live``: the Worker starts first and the events are published while it runs; the
    group times then run from the first publish to the last handler call.
    """
    loop = asyncio.get_running_loop()
    app = new_app(path, synchronous)
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
            await app.publish_many(TOPIC, chunk, type=EVENT_TYPE)
        return time.perf_counter() - begin

    async with app:
        publish_seconds = 0.0 if live else await publish_all()
        worker = Worker(app)
        stop = asyncio.Event()
        start = time.perf_counter()
        running = loop.create_task(worker.run(stop))
        try:
            if live:
                publish_seconds = await publish_all()
            await asyncio.wait_for(all_done.wait(), timeout)
        finally:
            stop.set()
            await asyncio.wait_for(running, 60)
    return E2EResult(publish_seconds, {g: t - start for g, t in finished.items()})


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
        probes.append(round(cpu_probe(), 1))
        log(
            f"  round {r + 1}: one group {one[-1]:,.0f}/s (raw {one_raw[-1]:,.0f}/s); "
            f"three groups, slowest {three[-1]:,.0f}/s each (raw {three_raw[-1]:,.0f}/s)"
        )
    # Informational: the same with publishing while the Worker runs, and with a plain
    # (def) handler, which the Worker hands to a thread pool, one hop per event.
    with work.folder("e2e-live") as d:
        res = await tidings_end_to_end(
            os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, live=True
        )
        live.append(res.rates(n)["g1"])
    with work.folder("e2e-sync") as d:
        res = await tidings_end_to_end(
            os.path.join(d, "events.db"), n, ["g1"], cfg.synchronous, sync_handler=True
        )
        sync.append(res.rates(n)["g1"])
    log(f"  live one group {live[-1]:,.0f}/s; def handler {sync[-1]:,.0f}/s")
    common = {"events": n, "synchronous": cfg.synchronous, "mode": "pre-published, then drained"}
    per_round = {"cpu_probe_ns": probes}
    return [
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
            {**common, "handler": "plain def, run by the Worker in a thread pool"},
        ),
    ]


# -- figure 4: cross-process latency ---------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TIDINGS_LOG_LEVEL"] = "WARNING"
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _read_latencies(path: str) -> tuple[list[float], int]:
    """Latencies in ms of the measured (non-warm-up) lines, sorted; and the line count."""
    out, lines = [], 0
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        for line in f:
            sent, received, warmup = map(int, line.split())
            lines += 1
            if not warmup:
                out.append((received - sent) / 1e6)
    return sorted(out), lines


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


async def _paced(total: int, rate: int, send: Callable[[int], Coroutine[Any, Any, None]]) -> float:
    """Start ``send(i)`` for i in 0..total-1 at ``rate`` per second (open loop: a slow
    send does not delay the next). Returns the worst lateness against the schedule, s."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    worst = 0.0
    begin = loop.time() + 0.01
    for i in range(total):
        delay = begin + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            worst = max(worst, -delay)
        task = loop.create_task(send(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending), 60)
    return worst


def _start_worker(url: str, out: str, log_path: str) -> subprocess.Popen[bytes]:
    """``python -m tidings run bench._latency_app:app`` on the log at ``url``."""
    with open(log_path, "wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings", "run", "bench._latency_app:app", "--url", url],
            cwd=ROOT,
            env=_child_env() | {"BENCH_LATENCY_OUT": out},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )


async def tidings_latency(d: str, cfg: Config) -> tuple[list[float], dict[str, Any]]:
    db, out = os.path.join(d, "events.db"), os.path.join(d, "latency.txt")
    url = sqlite_url(db, cfg.synchronous)
    total = cfg.latency_warmup + int(cfg.latency_rate * cfg.latency_seconds)
    note = "x" * 240
    async with new_app(db, cfg.synchronous, service="bench-latency-publisher") as app:
        proc = _start_worker(url, out, os.path.join(d, "worker.log"))
        try:
            # Ready when the worker's member holds every partition of the topic.
            for _ in range(600):  # 30 s
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited ({proc.returncode}); see worker.log")
                infos = [g for g in await app.transport.groups() if g.group == "latency"]
                if infos and sum(len(m.partitions) for m in infos[0].members) == PARTITIONS:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the latency worker did not join its group in 30 s")

            acks: list[float] = []  # publish -> publish returned (durable), ms

            async def send(i: int) -> None:
                sent = time.time_ns()
                warmup = int(i < cfg.latency_warmup)
                data: dict[str, Any] = {"sent_ns": sent, "warmup": warmup, "seq": i, "note": note}
                await app.publish(TOPIC, data, type="bench.probed", subject=f"key-{i % 64}")
                if i >= cfg.latency_warmup:
                    acks.append((time.time_ns() - sent) / 1e6)

            with GCWatch() as publisher_gc:
                worst = await _paced(total, cfg.latency_rate, send)
            for _ in range(600):  # up to 30 s for the last events to arrive
                if _count_lines(out) >= total:
                    break
                await asyncio.sleep(0.05)
        finally:
            _stop(proc)
    latencies, lines = _read_latencies(out)
    acks.sort()
    return latencies, {
        "received": lines,
        "sent": total,
        "worst_send_lateness_ms": round(worst * 1e3, 2),
        "publish_ack_ms": _spread(acks),
        "publisher_gc": publisher_gc.summary(),
        "worker_full_gc_ms": _worker_gc(out + ".gc"),
    }


def _worker_gc(path: str) -> list[float]:
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        return [round(float(line), 2) for line in f if line.strip()]
    return []


def _spread(sorted_ms: list[float]) -> dict[str, float]:
    return {
        name: round(percentile(sorted_ms, q), 3)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


def raw_latency(d: str, cfg: Config) -> tuple[list[float], dict[str, Any]]:
    """Raw sqlite3 across processes: this process inserts one row per transaction at the
    same rate; a child polls for new rows every millisecond (``bench/_rawpoll.py``)."""
    db, out = os.path.join(d, "raw.db"), os.path.join(d, "raw.txt")
    total = cfg.latency_warmup + int(cfg.latency_rate * cfg.latency_seconds)
    value = encoded_events(1)[0]
    conn = raw_connect(db, cfg.synchronous)
    conn.execute(
        "CREATE TABLE q (id INTEGER PRIMARY KEY, sent_ns INTEGER NOT NULL,"
        " warmup INTEGER NOT NULL, value BLOB NOT NULL)"
    )
    budget = cfg.latency_seconds + cfg.latency_warmup / cfg.latency_rate + 30
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._rawpoll", db, out, str(total), str(budget)],
        cwd=ROOT,
        env=_child_env(),
    )
    worst = 0.0
    acks: list[float] = []  # insert -> commit returned, ms
    try:
        deadline = Deadline(30)
        while not os.path.exists(out + ".ready") and not deadline.over():
            time.sleep(0.01)
        begin = time.monotonic() + 0.01
        for i in range(total):
            delay = begin + i / cfg.latency_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                worst = max(worst, -delay)
            sent = time.time_ns()
            conn.execute(
                "INSERT INTO q(sent_ns, warmup, value) VALUES (?,?,?)",
                (sent, int(i < cfg.latency_warmup), value),
            )
            if i >= cfg.latency_warmup:
                acks.append((time.time_ns() - sent) / 1e6)
        proc.wait(30)
    finally:
        _stop(proc)
        conn.close()
    latencies, lines = _read_latencies(out)
    acks.sort()
    return latencies, {
        "received": lines,
        "sent": total,
        "worst_send_lateness_ms": round(worst * 1e3, 2),
        "insert_ack_ms": _spread(acks),
    }


async def fig_latency(cfg: Config, work: Workdir) -> list[Figure]:
    with work.folder("latency-raw") as d:
        raw, raw_info = await asyncio.to_thread(raw_latency, d, cfg)
    with work.folder("latency-tidings") as d:
        ours, info = await tidings_latency(d, cfg)
    if not ours or not raw:
        raise RuntimeError(f"no latencies measured: tidings {info}, raw {raw_info}")
    detail = {
        "rate": cfg.latency_rate,
        "seconds": cfg.latency_seconds,
        "synchronous": cfg.synchronous,
        "tidings": info,
        "raw": raw_info,
        "worker": "python -m tidings run (a separate process)",
    }
    figures = []
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)):
        figures.append(
            Figure(
                f"latency_{name}_cross_process",
                percentile(ours, q),
                "ms",
                percentile(raw, q),
                "raw sqlite3, 1 row per transaction, 1 ms poll in another process",
                ("value", "<=", 10.0) if name == "p99" else None,
                detail if name == "p99" else {},
            )
        )
    log(
        f"  tidings p50/p99/max {percentile(ours, 50):.2f}/{percentile(ours, 99):.2f}/"
        f"{ours[-1]:.2f} ms; raw {percentile(raw, 50):.2f}/{percentile(raw, 99):.2f}/"
        f"{raw[-1]:.2f} ms"
    )
    return figures


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


# -- micro: the envelope codec ---------------------------------------------------------


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def fig_codec(cfg: Config, work: Workdir) -> list[Figure]:
    import json

    from tidings.codec import from_dict, to_dict

    app = Tidings("memory://", service="taskapi")
    event = app.build(payload(1), type=EVENT_TYPE, subject="task-00000001")
    raw = encode(event)
    doc = json.loads(raw)

    def stdlib_encode() -> bytes:
        return json.dumps(to_dict(event), separators=(",", ":"), default=_json_default).encode()

    def stdlib_decode() -> Any:
        return from_dict(json.loads(raw))

    fns: dict[str, Callable[[], Any]] = {
        "encode": lambda: encode(event),
        "decode": lambda: decode(raw),
        "stdlib_encode": stdlib_encode,
        "stdlib_decode": stdlib_decode,
        # The JSON libraries alone on the same envelope as a plain dict (decision 0001).
        "json_encode": lambda: json.dumps(doc, separators=(",", ":")).encode(),
        "json_decode": lambda: json.loads(raw),
        "orjson_encode": lambda: orjson.dumps(doc),
        "orjson_decode": lambda: orjson.loads(raw),
    }
    try:
        import msgspec

        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()
        fns["msgspec_encode"] = lambda: encoder.encode(doc)
        fns["msgspec_decode"] = lambda: decoder.decode(raw)
    except ImportError:
        log("  msgspec is not installed: left out of the library comparison")
    us = per_call_us(fns, cfg.micro_number, cfg.micro_repeat)
    enc, dec, enc_json, dec_json = (
        us["encode"], us["decode"], us["stdlib_encode"], us["stdlib_decode"]
    )  # fmt: skip
    size = {"envelope_bytes": len(raw)}
    figures = [
        Figure(
            "codec_encode",
            enc,
            "us/event",
            enc_json,
            "the same codec on stdlib json",
            ("ratio", "<=", 1),
            {**size, "what": "tidings.codec.encode(Event) -> bytes"},
        ),
        Figure(
            "codec_decode",
            dec,
            "us/event",
            dec_json,
            "the same codec on stdlib json",
            ("ratio", "<=", 1),
            {**size, "what": "tidings.codec.decode(bytes) -> Event (validated)"},
        ),
    ]
    libs = [name for name in ("json", "orjson", "msgspec") if f"{name}_encode" in us]
    times = {name: (us[f"{name}_encode"], us[f"{name}_decode"]) for name in libs}
    for op, k in (("encode", 0), ("decode", 1)):
        for name, pair in times.items():
            figures.append(
                Figure(
                    f"lib_{op}_{name}",
                    pair[k],
                    "us/envelope",
                    times["json"][k],
                    "stdlib json",
                    None,
                    size if name == "json" else {},
                )
            )
    log(
        "  "
        + ", ".join(f"{name} {e:.2f}/{d:.2f} us" for name, (e, d) in times.items())
        + f"; tidings codec {enc:.2f}/{dec:.2f} us (encode/decode)"
    )
    return figures


# -- the run ---------------------------------------------------------------------------

BENCHES: dict[str, Callable[[Config, Workdir], Awaitable[list[Figure]]]] = {
    "publish_many": fig_publish_batched,
    "publish_concurrent": fig_publish_concurrent,
    "e2e": fig_end_to_end,
    "litequeue": fig_litequeue,
    "latency": fig_latency,
    "codec": fig_codec,
}


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "orjson": getattr(orjson, "__version__", "?"),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


async def run(
    cfg: Config, names: list[str], root: str, profile: bool
) -> tuple[list[Figure], list[str]]:
    work = Workdir(root)
    probe_before = cpu_probe()
    figures: list[Figure] = []
    broken = []
    for name in names:
        log(f"{name} ...")
        profiler = cProfile.Profile() if profile else None
        try:
            if profiler:
                profiler.enable()
            got = await BENCHES[name](cfg, work)
        except Exception:
            log(f"  {name} broke:\n{traceback.format_exc()}")
            broken.append(name)
            continue
        finally:
            if profiler:
                profiler.disable()
                stats = pstats.Stats(profiler, stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(20)
        for figure in got:
            print(figure.as_json(), flush=True)
        figures.extend(got)
    probe = Figure(
        "cpu_probe",
        probe_before,
        "ns/iteration",
        None,
        "",
        None,
        {"after": round(cpu_probe(), 1), "what": "a fixed pure-Python loop; lower is faster"},
    )
    print(probe.as_json(), flush=True)
    figures.append(probe)
    return figures, broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sqlite", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, one round")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}"
    )
    parser.add_argument(
        "--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="for the log files"
    )
    parser.add_argument("--dir", default=None, help="where the temporary SQLite files go")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each benchmark (main thread) to stderr"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    cfg = Config.make(args.quick, args.synchronous)
    info = machine()
    log(f"machine: {json.dumps(info)}; {'quick' if cfg.quick else 'full'} run")
    root = tempfile.mkdtemp(prefix="tidings-bench-", dir=args.dir)
    started = time.perf_counter()
    try:
        figures, broken = asyncio.run(run(cfg, names, root, args.profile))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = round(os.getloadavg()[0], 2)
    print()
    print(
        f"tidings SQLite benchmarks ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s): "
        f"{info['nproc']} CPUs, Python {info['python']}, SQLite {info['sqlite']}, "
        f"synchronous={cfg.synchronous}; load average {info['loadavg_1min']} before, "
        f"{load_after} after"
    )
    busiest = max(info["loadavg_1min"], load_after)
    if busiest > (info["nproc"] or 1) / 2:
        print(
            f"note: the machine was busy (load average up to {busiest} on {info['nproc']} CPUs);"
            " absolute figures are pessimistic, ratios less so"
        )
    print(summary_table(figures))
    missed = [f.bench for f in figures if not f.ok]
    print(f"\ntargets missed: {', '.join(missed)}" if missed else "\nall targets met")
    if broken:
        print(f"benchmarks that broke (see stderr): {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
