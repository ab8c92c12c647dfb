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

The same run on a broker (:func:`fig_personal_on`, ``--only personal`` of
``bench.bench_kafka`` and ``bench.bench_nats``): the transport's URL instead of the
log's file, a topic and a group of its own per run, the keys in a SQLite file of their
own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from pydantic import BaseModel

from bench._common import PARTITIONS, TOPIC, Figure, log, median, summary_table
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
    url: str,
    keys_url: str,
    n: int,
    marked: bool,
    warm: bool = True,
    topic: str = TOPIC,
    group: str = "g",
) -> tuple[float, float]:
    """Seconds to publish ``n`` events to ``topic`` on the transport at ``url`` and have
    ``group``'s handler see them all, and the process's CPU seconds meanwhile (less
    disturbed by a busy machine); the data keys (when ``marked``) at ``keys_url``."""
    model = Marked if marked else Plain
    keys = SqlKeyStore(keys_url, master_key=MASTER_KEY) if marked else None
    # No schema registry: it works at start only, before the clock, and on a broker the
    # runs share one, where the plain and the marked model of one type would conflict.
    app = Tidings(url, service="bench", personal=keys, schemas="off")
    app.topic(topic, partitions=PARTITIONS)
    app.event("order.placed", subject="order_id")(model)
    seen = itertools.count(1)
    done = asyncio.Event()

    @app.subscriber(topic, group=group, personal=True)
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
            await app.publish_many(topic, payloads[i : i + 1000])
        worker = Worker(app)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.wait_for(done.wait(), 300)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
        return time.perf_counter() - begin, time.process_time() - cpu


# Rounds of plain/personal pairs (quick: 3): as in fig_tracing (decision 0043), each
# pair's two runs back to back, the order alternating from round to round, and the
# figure the median of the pairs' CPU ratios, which a busy machine disturbs far less
# than the rates (on a shared machine one triple of rounds moved the rate ratio from
# 0.40 to 0.99).
ROUNDS = 7

# One run of "plain", "warm" or "cold": its events per second and CPU us per event.
Run = Callable[[str], Awaitable[tuple[float, float]]]


def events(cfg: Config) -> int:
    return max(cfg.e2e_events // 2, 2000)


async def paired(cfg: Config, n: int, run: Run, detail: dict[str, object]) -> list[Figure]:
    """Pairs of ``run("plain")`` and ``run("warm")`` (the first three rounds also
    ``run("cold")``, informational), and the figure: the median of the pairs' CPU
    ratios, ``detail`` added to its own."""
    rounds = 3 if cfg.quick else ROUNDS
    # (personal, plain) per pair: events/s and CPU us per event.
    rate: dict[str, list[tuple[float, float]]] = {"warm": [], "cold": []}
    cpu: dict[str, list[tuple[float, float]]] = {"warm": [], "cold": []}
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
    detail = {
        **detail, "events": n, "subjects": SUBJECTS, "rounds": rounds,
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


async def fig_personal(cfg: Config, work: Workdir) -> list[Figure]:
    """On the SQLite log, the keys in the log's own file."""
    n = events(cfg)

    async def run(name: str) -> tuple[float, float]:
        with work.folder(f"personal-{name}") as d:
            path = os.path.join(d, "events.db")
            seconds, cpu_seconds = await one_run(
                sqlite_url(path, cfg.synchronous), f"sqlite:///{path}", n,
                marked=name != "plain", warm=name != "cold",
            )  # fmt: skip
        return n / seconds, cpu_seconds / n * 1e6

    return await paired(cfg, n, run, {"transport": "sqlite"})


async def fig_personal_on(url: str, cfg: Config, work: Workdir) -> list[Figure]:
    """On the broker at ``url``: each run a topic and a group of its own (no run sees
    another's events or offsets), the keys in a SQLite file of the run's own."""
    n = events(cfg)
    runs = itertools.count()

    async def run(name: str) -> tuple[float, float]:
        i = next(runs)
        with work.folder(f"personal-{name}") as d:
            seconds, cpu_seconds = await one_run(
                url, f"sqlite:///{os.path.join(d, 'keys.db')}", n,
                marked=name != "plain", warm=name != "cold",
                topic=f"personal-{i}-{name}", group=f"g-{i}",
            )  # fmt: skip
        return n / seconds, cpu_seconds / n * 1e6

    return await paired(cfg, n, run, {"transport": url.split(":", 1)[0]})


def main_on(
    prog: str, broker: Callable[[], contextlib.AbstractContextManager[str]], argv: list[str]
) -> int:
    """``--only personal`` of a broker's bench: ``broker()`` starts the broker and yields
    the URL tidings connects to (and stops it after); prints the figure's JSON line and
    the summary table."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"{prog} --only personal", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 events, three rounds")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick, "FULL")
    load_before = round(os.getloadavg()[0], 2)
    root = tempfile.mkdtemp(prefix="tidings-bench-")
    started = time.perf_counter()
    try:
        with broker() as url:
            figures = asyncio.run(fig_personal_on(url, cfg, Workdir(root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for figure in figures:
        print(figure.as_json(), flush=True)
    print(
        f"\n{prog} --only personal ({'quick' if cfg.quick else 'full'} run, "
        f"{time.perf_counter() - started:.0f} s): {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}; load average {load_before} before, "
        f"{round(os.getloadavg()[0], 2)} after"
    )
    print(summary_table(figures))
    return 0
