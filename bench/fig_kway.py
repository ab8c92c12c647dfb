"""A group's ``concurrency`` for slow calls (issue 21 item 4, decision 0033): wall time
of 200 calls through a worker, one at a time per partition against K per partition.

Each run pre-publishes ``EVENTS`` events over ``KEYS`` keys (subjects, each key's
events in order) to a fresh SQLite log of ``PARTITIONS`` partitions, starts a Worker
whose one async handler awaits ``asyncio.sleep(delay)`` (a stand-in for an LLM call
that takes ``delay`` seconds) and times it until every event is handled and its
offsets committed. Rounds alternate K=1 and K=``--k``; the ratio is K=1 / K wall time,
per round. ``python -m bench.fig_kway [--delay 0.5] [--k 16] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tidings import Tidings
from tidings.testing import eventually
from tidings.worker import Worker

EVENTS, KEYS, PARTITIONS = 200, 50, 4
TOPIC = "calls"


async def one_run(folder: Path, concurrency: int, delay: float) -> float:
    """Seconds from the worker's start until all ``EVENTS`` are handled and committed."""
    app = Tidings(
        f"sqlite:///{folder / 'log.db'}?partitions={PARTITIONS}", service="kway", schemas="off"
    )
    app.topic(TOPIC, partitions=PARTITIONS)
    app.group("agents", concurrency=concurrency)
    handled = [0]

    @app.subscriber(TOPIC, group="agents")
    async def call(data: dict[str, Any]) -> None:
        await asyncio.sleep(delay)  # the stand-in's reply time
        handled[0] += 1

    async def committed() -> bool:
        infos = [i for i in await app.transport.groups() if i.group == "agents"]
        return bool(infos) and infos[0].lag == 0

    async with app:
        keys = [f"key-{i}" for i in range(KEYS)]
        events = [
            app.build({"n": n}, type="call.requested", subject=keys[n % KEYS])
            for n in range(EVENTS)
        ]
        await app.publish_events(TOPIC, events)
        worker = Worker(app, commit_interval=0.02)
        stop = asyncio.Event()
        start = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        await eventually(lambda: handled[0] == EVENTS, timeout=3600, interval=0.01)
        await eventually(committed, timeout=60, interval=0.01)
        seconds = time.perf_counter() - start
        stop.set()
        await task
    return seconds


async def main(delay: float, k: int, rounds: int) -> None:
    ratios, ones, ks = [], [], []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
            t1 = await one_run(Path(one), 1, delay)
            tk = await one_run(Path(many), k, delay)
        ones.append(t1)
        ks.append(tk)
        ratios.append(t1 / tk)
        print(f"round {r + 1}: K=1 {t1:.2f} s, K={k} {tk:.2f} s, ratio {t1 / tk:.2f}", flush=True)
    print(
        f"{EVENTS} calls of {delay:g} s, {KEYS} keys, {PARTITIONS} partitions: median K=1 "
        f"{statistics.median(ones):.2f} s, K={k} {statistics.median(ks):.2f} s, "
        f"ratio {statistics.median(ratios):.2f} (floor: {EVENTS * delay / PARTITIONS:.1f} s "
        f"one at a time per partition)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fig_kway")
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.delay, args.k, args.rounds))
