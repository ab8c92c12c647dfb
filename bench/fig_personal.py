"""Issue 22: what encrypting personal fields costs end to end (tidings.shredding,
decision 0036).

Per round, the same ``n`` events published (``publish_many``, 1000 at a time) and then
drained by one group whose async handler asks for personal data (``personal=True``):
once with a payload whose two string fields are plain, once with the same payload
whose two fields are marked ``Personal`` (sealed at publish with AES-GCM under their
subject's data key, opened at consume; keys in the log's own file, 500 subjects, so
most keys come from the key store's cache, as in a service with returning users).
Reported: per pair of runs back to back (:data:`ROUNDS`), CPU time per event from the
first publish to the last handler call, and events per second; the figure is the
median of the pairs' CPU ratios, plain's over personal's (target: at most 25 % slower,
>= 0.8); the rates' ratios are in the detail.
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


# Rounds of plain/personal pairs (quick: 3): as in fig_tracing (decision 0043), each
# pair's two runs back to back, the order alternating from round to round, and the
# figure the median of the pairs' CPU ratios, which a busy machine disturbs far less
# than the rates (on a shared machine one triple of rounds moved the rate ratio from
# 0.40 to 0.99).
ROUNDS = 7


async def fig_personal(cfg: Config, work: Workdir) -> list[Figure]:
    n = max(cfg.e2e_events // 2, 2000)
    rounds = 3 if cfg.quick else ROUNDS
    # (personal, plain) per pair: events/s and CPU us per event.
    rate: dict[str, list[tuple[float, float]]] = {"warm": [], "cold": []}
    cpu: dict[str, list[tuple[float, float]]] = {"warm": [], "cold": []}

    async def run(name: str) -> tuple[float, float]:
        marked, warm = name != "plain", name != "cold"
        with work.folder(f"personal-{name}") as d:
            seconds, cpu_seconds = await one_run(
                os.path.join(d, "events.db"), n, cfg.synchronous, marked, warm
            )
        return n / seconds, cpu_seconds / n * 1e6

    for r in range(rounds):
        for name in ("warm", "cold") if r < 3 else ("warm",):  # cold: informational
            pair = {}
            for side in ("plain", name) if r % 2 == 0 else (name, "plain"):
                pair[side] = await run(side)
            rate[name].append((pair[name][0], pair["plain"][0]))
            cpu[name].append((pair[name][1], pair["plain"][1]))
        log(
            f"  round {r + 1}: "
            + "; ".join(
                f"{k} {rate[k][-1][0]:,.0f}/s against {rate[k][-1][1]:,.0f}/s "
                f"({rate[k][-1][0] / rate[k][-1][1]:.3f}), {cpu[k][-1][0]:.1f} us CPU/event "
                f"against {cpu[k][-1][1]:.1f} ({cpu[k][-1][1] / cpu[k][-1][0]:.3f})"
                for k in rate
                if len(rate[k]) == r + 1
            )
        )
    detail: dict[str, object] = {
        "events": n, "subjects": SUBJECTS, "rounds": rounds,
        "figure": "median of the pairs' CPU ratios (plain's CPU per event / personal's)",
    }  # fmt: skip
    for k in ("warm", "cold"):
        detail[f"cpu_ratios_{k}"] = [round(p / m, 3) for m, p in cpu[k]]
        detail[f"rate_ratios_{k}"] = [round(m / p, 3) for m, p in rate[k]]
        detail[f"rate_ratio_median_{k}"] = round(median([m / p for m, p in rate[k]]), 3)
        detail[f"cpu_us_per_event_{k}"] = [round(m, 2) for m, _ in cpu[k]]
        detail[f"cpu_us_per_event_plain_beside_{k}"] = [round(p, 2) for _, p in cpu[k]]
        detail[f"rounds_{k}"] = [round(m) for m, _ in rate[k]]
        detail[f"rounds_plain_beside_{k}"] = [round(p) for _, p in rate[k]]
    return [
        Figure(
            "e2e_two_personal_fields",
            median([p / m for m, p in cpu["warm"]]),
            "x plain (CPU per event)",
            None,
            "the same events with the two fields unmarked, paired runs",
            ("value", ">=", 0.8),
            detail,
        )
    ]
