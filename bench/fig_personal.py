"""Issue 22: what encrypting personal fields costs end to end (tidings.shredding,
decision 0036).

Per round, the same ``n`` events published (``publish_many``, 1000 at a time) and then
drained by one group whose async handler asks for personal data (``personal=True``):
once with a payload whose two string fields are plain, once with the same payload
whose two fields are marked ``Personal`` (sealed at publish with AES-GCM under their
subject's data key, opened at consume; keys in the log's own file, 500 subjects, so
most keys come from the key store's cache, as in a service with returning users).
Reported: events per second from the first publish to the last handler call, personal
against plain in the same round, and the ratio (target: at most 25 % slower, >= 0.8).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Annotated

from pydantic import BaseModel

from bench._common import PARTITIONS, TOPIC, Figure, log, median
from bench._setup import Config, Workdir, sqlite_url
from tidings import Tidings, Worker
from tidings.personal import Personal
from tidings.shredding import SqlKeyStore

SUBJECTS = 500
MASTER_KEY = os.urandom(32)


class Plain(BaseModel):
    order_id: str
    customer_id: str
    email: str
    amount_cents: int


class Marked(BaseModel):
    order_id: str
    customer_id: Annotated[str, Personal(subject="customer_id")]
    email: Annotated[str, Personal(subject="customer_id")]
    amount_cents: int


async def one_run(
    path: str, n: int, synchronous: str, marked: bool, warm: bool = True
) -> tuple[float, float]:
    """Seconds to publish ``n`` events and have one group's handler see them all, and
    the process's CPU seconds meanwhile (less disturbed by a busy machine)."""
    model = Marked if marked else Plain
    keys = SqlKeyStore(f"sqlite:///{path}", master_key=MASTER_KEY) if marked else None
    app = Tidings(sqlite_url(path, synchronous), service="bench", personal=keys)
    app.topic(TOPIC, partitions=PARTITIONS)
    app.event("order.placed", subject="order_id")(model)
    seen = itertools.count(1)
    done = asyncio.Event()

    @app.subscriber(TOPIC, group="g", personal=True)
    async def handle(order: BaseModel) -> None:
        if next(seen) == n:
            done.set()

    payloads = [
        model(
            order_id=f"o-{i}", customer_id=f"c-{i % SUBJECTS}",
            email=f"c-{i % SUBJECTS}@example.com", amount_cents=i,
        )
        for i in range(n)
    ]  # fmt: skip
    async with app:
        if marked and warm and app.shredder is not None:
            for i in range(SUBJECTS):
                app.shredder.keys.key_for(f"c-{i}")
        begin, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, 1000):
            await app.publish_many(TOPIC, payloads[i : i + 1000])
        worker = Worker(app)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.wait_for(done.wait(), 300)
        finally:
            stop.set()
            await task
        return time.perf_counter() - begin, time.process_time() - cpu


async def fig_personal(cfg: Config, work: Workdir) -> list[Figure]:
    n = max(cfg.e2e_events // 2, 2000)
    rates: dict[str, list[float]] = {"plain": [], "warm": [], "cold": []}
    cpu: dict[str, list[float]] = {"plain": [], "warm": [], "cold": []}
    runs = {"plain": (False, True), "warm": (True, True), "cold": (True, False)}
    for r in range(cfg.e2e_rounds):
        for name, (marked, warm) in runs.items():
            with work.folder(f"personal-{name}") as d:
                path = os.path.join(d, "events.db")
                seconds, cpu_seconds = await one_run(path, n, cfg.synchronous, marked, warm)
            rates[name].append(n / seconds)
            cpu[name].append(cpu_seconds / n * 1e6)
        log(
            f"  round {r + 1}: "
            + "; ".join(
                f"{k} {rates[k][-1]:,.0f}/s ({rates[k][-1] / rates['plain'][-1]:.3f}), "
                f"{cpu[k][-1]:.1f} us CPU/event ({cpu['plain'][-1] / cpu[k][-1]:.3f})"
                for k in runs
            )
        )
    detail: dict[str, object] = {"events": n, "subjects": SUBJECTS}
    for k in ("warm", "cold"):
        detail[f"rounds_{k}"] = [round(x) for x in rates[k]]
        detail[f"ratios_{k}"] = [
            round(a / b, 3) for a, b in zip(rates[k], rates["plain"], strict=True)
        ]
        detail[f"cpu_us_per_event_{k}"] = [round(x, 2) for x in cpu[k]]
        detail[f"cpu_ratios_{k}"] = [
            round(b / a, 3) for a, b in zip(cpu[k], cpu["plain"], strict=True)
        ]
    detail["rounds_plain"] = [round(x) for x in rates["plain"]]
    detail["cpu_us_per_event_plain"] = [round(x, 2) for x in cpu["plain"]]
    return [
        Figure(
            "e2e_two_personal_fields",
            median(rates["warm"]),
            "events/s",
            median(rates["plain"]),
            "the same events with the two fields unmarked, same rounds",
            ("ratio", ">=", 0.8),
            detail,
        )
    ]
