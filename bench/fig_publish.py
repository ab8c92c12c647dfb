"""Figures 1 and 2: batched publish, and concurrent single publishes (group commit)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench._common import (
    EVENT_TYPE,
    PARTITIONS,
    TOPIC,
    Deadline,
    Figure,
    cpu_probe,
    events_ddl,
    log,
    median,
    now_ms,
    payload,
    raw_connect,
)
from bench._setup import LOOP_SECONDS, Config, Workdir, encoded_events, new_app

# -- figure 1: batched publish vs raw batched inserts ----------------------------------

_INSERT = "INSERT INTO events(topic_id, partition, offset, ts, key, value) VALUES (?,?,?,?,?,?)"


def raw_batched_insert(
    path: str, values: list[bytes], batch: int, synchronous: str, partitions: int = PARTITIONS
) -> float:
    """Raw sqlite3: the same encoded bytes, in a table of the same shape, ``batch`` rows
    per transaction, keyless rows spread over ``partitions`` in turn as tidings does."""
    conn = raw_connect(path, synchronous)
    try:
        conn.execute(events_ddl())
        offsets = [0] * partitions
        deadline = Deadline(LOOP_SECONDS)
        done = 0
        start = time.perf_counter()
        for i in range(0, len(values), batch):
            if deadline.over():
                break
            ts = now_ms()
            rows = []
            for j, value in enumerate(values[i : i + batch], i):
                p = j % partitions
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
    path: str, values: list[bytes], synchronous: str, seconds: float, partitions: int = PARTITIONS
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
            p = i % partitions
            conn.execute(_INSERT, (1, p, i // partitions, now_ms(), None, value))
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


# -- figure 2b: 100 concurrent single publishes to one partition ------------------------


async def tidings_single_publishes(path: str, n: int, tasks: int, synchronous: str) -> float:
    """``tasks`` asyncio tasks, each awaiting ``app.publish`` of plain payloads (no key)
    one after another, to a topic of one partition."""
    per_task = n // tasks
    work = [[payload(t * per_task + i) for i in range(per_task)] for t in range(tasks)]
    async with new_app(path, synchronous, partitions=1) as app:
        await app.publish(TOPIC, payload(-1), type=EVENT_TYPE)  # the file and topic exist

        async def publisher(items: list[dict[str, Any]]) -> None:
            for item in items:
                await app.publish(TOPIC, item, type=EVENT_TYPE)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(publisher(w) for w in work)), LOOP_SECONDS)
        return per_task * tasks / (time.perf_counter() - start)


async def fig_publish_one_partition(cfg: Config, work: Workdir) -> list[Figure]:
    """The side-by-side of issue 17: 100 concurrent ``app.publish`` calls, one partition,
    ``synchronous`` as configured (FULL by default), against raw sqlite3 inserting the
    same bytes 100 rows per transaction (what group commit can at best amount to) and
    one row per transaction (what a naive durable publisher does)."""
    n, tasks = cfg.one_partition_events, cfg.one_partition_tasks
    values = encoded_events(n)
    ours, batched, single, probes = [], [], [], []
    for r in range(cfg.rounds):
        order = ("raw", "tidings") if r % 2 == 0 else ("tidings", "raw")
        for side in order:
            with work.folder(f"one-partition-{side}") as d:
                db = os.path.join(d, "events.db")
                if side == "tidings":
                    ours.append(await tidings_single_publishes(db, n, tasks, cfg.synchronous))
                    continue
                batched.append(raw_batched_insert(db, values, tasks, cfg.synchronous, 1))
            with work.folder("one-partition-raw-single") as d:
                single.append(
                    raw_single_row_transactions(
                        os.path.join(d, "events.db"),
                        values[: cfg.raw_single_events],
                        cfg.synchronous,
                        15,
                        1,
                    )
                )
        probes.append(round(cpu_probe(), 1))
        log(
            f"  round {r + 1}: tidings {ours[-1]:,.0f}/s, raw {tasks} rows/tx "
            f"{batched[-1]:,.0f}/s, raw 1 row/tx {single[-1]:,.0f}/s"
        )
    return [
        Figure(
            f"publish_single_{tasks}_one_partition",
            median(ours),
            "events/s",
            median(batched),
            f"raw sqlite3, {tasks} rows per transaction, synchronous={cfg.synchronous}",
            ("value", ">=", 25_000),
            {
                "events": n,
                "tasks": tasks,
                "partitions": 1,
                "synchronous": cfg.synchronous,
                "bytes_per_event": round(sum(map(len, values)) / len(values)),
                "rounds_tidings": [round(x) for x in ours],
                "rounds_raw_batched": [round(x) for x in batched],
                "rounds_raw_one_row_per_tx": [round(x) for x in single],
                "ratio_to_one_row_per_tx": round(median(ours) / median(single), 2),
                "cpu_probe_ns": probes,
            },
        )
    ]
