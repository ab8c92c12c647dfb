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
