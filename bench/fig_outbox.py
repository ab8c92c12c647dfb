"""The transactional outbox: relay throughput from a SQLite outbox to the SQLite log,
against ``app.publish_many`` of the same events in the same run; and how long an
event committed to an idle outbox takes to reach the log."""

from __future__ import annotations

import asyncio
import os
import random
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

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
    percentile,
)
from bench._setup import LOOP_SECONDS, Config, Workdir, new_app
from tidings import Event, Tidings
from tidings.outbox import Outbox

BATCH = 500  # the relay's default batch, and the baseline's publish_many batch
ADD_TX = 100  # events per transaction while filling the outbox
LATENCY_SAMPLES = 200


def _service_engine(folder: str) -> sa.Engine:
    """The service's own database, in WAL mode as the docs advise for a SQLite outbox
    (the relay reads while requests write)."""
    engine = sa.create_engine(f"sqlite:///{os.path.join(folder, 'app.db')}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return engine


def _events(app: Tidings, n: int) -> list[Event]:
    return [app.build(payload(i), type=EVENT_TYPE, subject=f"task-{i % 100}") for i in range(n)]


def _fill(outbox: Outbox, engine: sa.Engine, events: list[Event]) -> float:
    """Add ``events`` in transactions of ADD_TX; the adds per second."""
    start = time.perf_counter()
    for i in range(0, len(events), ADD_TX):
        with Session(engine) as session, session.begin():
            for event in events[i : i + ADD_TX]:
                outbox.add(session, event)
    return len(events) / (time.perf_counter() - start)


async def outbox_relay(folder: str, n: int, synchronous: str) -> tuple[float, float]:
    """Fill an outbox with ``n`` events (untimed for the relay figure), then time a
    relay moving all of them to the log. Returns (relayed/s, added/s)."""
    engine = _service_engine(folder)
    async with new_app(os.path.join(folder, "events.db"), synchronous) as app:
        outbox = Outbox(app, engine, topic=TOPIC)
        outbox.create_table()
        added = _fill(outbox, engine, _events(app, n))
        relay = outbox.relay(batch=BATCH)
        stop = asyncio.Event()
        deadline = Deadline(LOOP_SECONDS)
        start = time.perf_counter()
        task = asyncio.create_task(relay.run(stop))
        try:
            while relay.relayed < n and not deadline.over() and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - start
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
        if relay.relayed < n:
            raise RuntimeError(f"the relay moved {relay.relayed} of {n} events in time")
        left = (await outbox.status()).pending
        if left:
            raise RuntimeError(f"{left} rows still in the outbox after the relay stopped")
    engine.dispose()
    return relay.relayed / elapsed, added


async def publish_many_baseline(folder: str, n: int, synchronous: str) -> float:
    """The same events straight to the log: ``publish_many`` of BATCH at a time."""
    async with new_app(os.path.join(folder, "events.db"), synchronous) as app:
        events = _events(app, n)
        deadline = Deadline(LOOP_SECONDS)
        done = 0
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            if deadline.over():
                break
            await app.publish_many(TOPIC, events[i : i + BATCH])
            done += len(events[i : i + BATCH])
        return done / (time.perf_counter() - start)


async def outbox_latency(folder: str, synchronous: str) -> list[float]:
    """Milliseconds from the commit of a one-event transaction to the relay's append
    returning, with the relay idle before each (random gaps of 0-100 ms, so that the
    commits fall at every phase of its 50 ms poll).

    The waits below poll the relay's counter every half millisecond: the relay has no
    completion signal, and a poll that fine adds at most 0.5 ms to a sample."""
    engine = _service_engine(folder)
    async with new_app(os.path.join(folder, "events.db"), synchronous) as app:
        outbox = Outbox(app, engine, topic=TOPIC)
        outbox.create_table()
        relay = outbox.relay()
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        rng = random.Random(7)
        samples: list[float] = []
        deadline = Deadline(60)
        try:
            while not relay.holding and not deadline.over():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            for i in range(LATENCY_SAMPLES):
                if deadline.over():
                    break
                await asyncio.sleep(rng.uniform(0, 0.1))  # any phase of the poll cycle
                before = relay.relayed
                with Session(engine) as session, session.begin():
                    outbox.add(session, payload(i), type=EVENT_TYPE)
                committed = time.perf_counter()
                while relay.relayed == before and not deadline.over():  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
                samples.append((time.perf_counter() - committed) * 1000)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
    engine.dispose()
    return sorted(samples)


async def fig_outbox(cfg: Config, work: Workdir) -> list[Figure]:
    n = cfg.batch_events
    ours, base, adds, probes = [], [], [], []
    for r in range(cfg.rounds):
        order = ("outbox", "publish_many") if r % 2 == 0 else ("publish_many", "outbox")
        for side in order:
            with work.folder(f"outbox-{side}") as d:
                if side == "outbox":
                    relayed, added = await outbox_relay(d, n, cfg.synchronous)
                    ours.append(relayed)
                    adds.append(added)
                else:
                    base.append(await publish_many_baseline(d, n, cfg.synchronous))
        probes.append(round(cpu_probe(), 1))
        log(
            f"  round {r + 1}: relay {ours[-1]:,.0f}/s, publish_many {base[-1]:,.0f}/s "
            f"(outbox.add {adds[-1]:,.0f}/s)"
        )
    with work.folder("outbox-latency") as d:
        lat = await outbox_latency(d, cfg.synchronous)
    log(
        f"  commit -> log p50/p99/max {percentile(lat, 50):.1f}/{percentile(lat, 99):.1f}/"
        f"{lat[-1]:.1f} ms"
    )
    detail = {
        "events": n,
        "batch": BATCH,
        "partitions": PARTITIONS,
        "synchronous": cfg.synchronous,
        "outbox_db": "SQLite, WAL, synchronous FULL (its default)",
        "rounds_relay": [round(x) for x in ours],
        "rounds_publish_many": [round(x) for x in base],
        "cpu_probe_ns": probes,
    }
    return [
        Figure(
            "outbox_relay",
            median(ours),
            "events/s",
            median(base),
            f"app.publish_many of the same events, {BATCH} a call",
            ("value", ">=", 5000),
            detail,
        ),
        Figure(
            "outbox_add",
            median(adds),
            "events/s",
            None,
            "",
            None,
            {"events_per_transaction": ADD_TX, "rounds": [round(x) for x in adds]},
        ),
        Figure(
            "outbox_commit_to_log_p50",
            percentile(lat, 50),
            "ms",
            None,
            "",
            None,
            {
                "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(lat[-1], 2),
                "samples": len(lat),
                "poll_interval_ms": 50,
                "what": "one-event transactions to an idle relay: about half the poll "
                "interval, plus one append and one delete",
            },
        ),
    ]
