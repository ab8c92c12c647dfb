"""One group end to end, its cost per event: CPU time, or machine instructions under
callgrind (issue 17's hot-path target; docs/benchmarks.md, "One group end to end").

    python -m bench.cost_e2e prepare DB N     # publish N events into DB (not measured)
    python -m bench.cost_e2e worker DB N      # drain DB with a Worker, one async handler
    python -m bench.cost_e2e raw DB N         # drain DB with the raw sqlite3 loop
    python -m bench.cost_e2e cpu [N] [ROUNDS] # both on fresh files, CPU per event, in turns

Instructions per event are the marginal count between two run lengths, so that start-up
is left out (the machine's load does not change them)::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/w4.out \\
        python -m bench.cost_e2e worker /tmp/e2e-4000.db 4000
    (the same for 12000; then (I12000 - I4000) / 8000)

Under callgrind (``SLOWED=50`` in the environment), the run's time bound
(``tidings.worker.dispatch.RUN_SECONDS``) and the commit interval are 50 times as long:
valgrind runs the program about that much slower, and with the real bounds runs would be
cut after a few events (the rest decoded again) and commits made every few events, so
that the count would depend on the machine's load.

``prepare`` writes a file once; ``worker`` and ``raw`` copy it first, so it can be
drained again (by the other tree too).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import time

from bench._common import EVENT_TYPE, TOPIC, Deadline, payload
from bench._setup import new_app
from bench.fig_e2e import raw_consume
from tidings import Worker
from tidings.worker import dispatch

SYNCHRONOUS = "FULL"


async def prepare(path: str, n: int) -> None:
    app = new_app(path, SYNCHRONOUS)
    app.subscriber(TOPIC, group="g1")(_noop)  # the group's topics exist
    async with app:
        for i in range(0, n, 1000):
            chunk = [payload(k) for k in range(i, min(i + 1000, n))]
            await app.publish_many(TOPIC, chunk, type=EVENT_TYPE)


async def _noop(data: object) -> None:
    return None


async def drain(path: str, n: int, timeout: float = 300.0) -> float:
    """Run a Worker over ``path`` until its handler had ``n`` events; return the CPU
    seconds (all threads) from the Worker's start to the last call."""
    app = new_app(path, SYNCHRONOUS)
    counter = itertools.count(1)
    done = asyncio.Event()

    @app.subscriber(TOPIC, group="g1")
    async def count(data: object) -> None:
        if next(counter) == n:
            done.set()

    slowed = float(os.environ.get("SLOWED", "1"))
    dispatch.RUN_SECONDS *= slowed
    async with app:
        worker = Worker(app, commit_interval=0.05 * slowed)
        stop = asyncio.Event()
        cpu = time.process_time()
        running = asyncio.get_running_loop().create_task(worker.run(stop))
        try:
            await asyncio.wait_for(done.wait(), timeout)
            cpu = time.process_time() - cpu
        finally:
            stop.set()
            await asyncio.wait_for(running, 60)
    return cpu


def _copy(path: str) -> str:
    """A fresh copy of a prepared file (and its WAL, if any)."""
    folder = tempfile.mkdtemp(prefix="cost-e2e-")
    target = os.path.join(folder, "events.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, target + suffix)
    return target


def raw_cpu(path: str, n: int) -> float:
    cpu = time.process_time()
    raw_consume(path, n, "raw1", SYNCHRONOUS)
    return time.process_time() - cpu


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "cpu"
    if mode == "prepare":
        asyncio.run(prepare(argv[1], int(argv[2])))
    elif mode in ("worker", "raw"):
        path, n = _copy(argv[1]), int(argv[2])
        try:
            if mode == "worker":
                asyncio.run(drain(path, n))
            else:
                raw_consume(path, n, "raw1", SYNCHRONOUS)
        finally:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    elif mode == "cpu":
        n = int(argv[1]) if len(argv) > 1 else 50_000
        rounds = int(argv[2]) if len(argv) > 2 else 3
        deadline = Deadline(600)
        with tempfile.TemporaryDirectory(prefix="cost-e2e-") as folder:
            source = os.path.join(folder, "source.db")
            asyncio.run(prepare(source, n))
            for r in range(rounds):
                if deadline.over():
                    break
                path = _copy(source)
                worker = asyncio.run(drain(path, n))
                raw = raw_cpu(path, n)
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                print(
                    f"round {r + 1}: Worker {worker / n * 1e6:.2f} us/event, raw loop "
                    f"{raw / n * 1e6:.2f} us/event, ratio {raw / worker:.3f} "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    else:
        sys.exit(f"unknown mode {mode!r}: prepare, worker, raw or cpu")


if __name__ == "__main__":
    main(sys.argv[1:])
