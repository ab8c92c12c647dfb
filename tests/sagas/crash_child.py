"""The worker the saga crash test runs and kills: ``python -m tests.sagas.crash_child
DIR DB [--kill POINT --nth N]``.

It runs the saga of :mod:`tests.sagas.helpers` (group ``esc``), its outbox relay and
the ``sink`` group on the SQLite log ``DIR/log.db`` (relay and partitions: ``LEASE``
leases) and the database ``DB``, until SIGTERM; with ``--kill`` it SIGKILLs itself at
the N-th time it reaches POINT:

- ``start``, ``deadline``, ``compensation``, ``step``: at the end of such a step, its
  state, history, outbox rows and deadlines written, not committed;
- ``batch-commit``: right after an inbox batch commit (a step and its mark committed,
  the offset not);
- ``offset-commit``: at an offset commit of group ``esc`` (steps committed, offsets not);
- ``relay-append``: right after the relay's append to the topic returned (events on
  the log, their outbox rows not deleted: they are published again).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.sagas.helpers import PARTITIONS, TOPIC, add_saga, add_sink
from tidings import Outbox, Tidings
from tidings.inbox._batch import Batch
from tidings.middleware import Retry, default_middleware
from tidings.transports.sqlite import SQLiteConsumer
from tidings.worker import Worker

# Seconds of the partition and relay leases: a successor waits one out before it takes
# the killed worker's over; a live worker whose renewals are late by 3/4 of one gives its
# partitions up, which a loaded machine could make happen with 1 s.
LEASE = 2.0
POINTS = (
    "start", "deadline", "compensation", "step", "batch-commit", "offset-commit", "relay-append"
)  # fmt: skip


def log_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'log.db'}?partitions={PARTITIONS}&lease={LEASE:g}"


def die(where: str) -> None:
    os.write(2, f"saga crash child {os.getpid()}: SIGKILL {where}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def build(folder: Path, db: str, point: str | None = None, nth: int = 0) -> tuple[Tidings, Any]:
    app = Tidings(log_url(folder), service="saga-crash")
    app.topic(TOPIC, partitions=PARTITIONS)
    seen = itertools.count(1)

    def hook(kind: str) -> None:
        if kind == point and next(seen) == nth:
            die(f"at the end of {kind} step #{nth}, not committed")

    outbox = Outbox(app, db, topic=TOPIC)
    saga = add_saga(app, db, hook=hook, outbox=outbox)
    app.add_component(outbox.relay(poll_interval=0.02, lease=LEASE))
    sink = add_sink(app, db)
    return app, (saga, sink, outbox)


def arm(app: Tidings, point: str | None, nth: int) -> None:
    """The kill points that wrap a method of tidings (no hook in tidings needed)."""
    count = itertools.count(1)
    if point == "batch-commit":
        original = Batch.commit

        async def commit(self: Batch) -> None:
            events = self.count
            await original(self)
            if events and next(count) == nth:  # a batch with events in it
                die(f"after inbox batch commit #{nth} ({events} events), offsets not")

        Batch.commit = commit  # type: ignore[method-assign]
    elif point == "offset-commit":
        consumer_commit = SQLiteConsumer.commit

        async def offsets(self: SQLiteConsumer, done: Any) -> None:
            if done and self.group == "esc" and next(count) == nth:
                die(f"at offset commit #{nth} of esc: {dict(done)}")
            await consumer_commit(self, done)

        SQLiteConsumer.commit = offsets  # type: ignore[method-assign]
    elif point == "relay-append":
        append = app.transport.append

        async def appended(name: str, records: Any) -> Any:
            placed = await append(name, records)
            if name == TOPIC and next(count) == nth:
                die(f"after relay append #{nth} ({len(records)} events), rows not deleted")
            return placed

        app.transport.append = appended  # type: ignore[method-assign]


async def run(args: argparse.Namespace) -> int:
    app, (saga, sink, outbox) = build(args.dir, args.db, args.kill, args.nth)
    arm(app, args.kill, args.nth)
    worker = Worker(
        app, middleware=default_middleware(Retry(base_delay=0.01, max_delay=0.05)),
        commit_interval=0.02, shutdown_timeout=10,
    )  # fmt: skip
    print(f"saga worker {os.getpid()} starting", file=sys.stderr, flush=True)
    await worker.serve()  # until SIGTERM (or the SIGKILL the test sends)
    await saga.close()
    await sink.close()
    await outbox.dispose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sagas.crash_child")
    parser.add_argument("dir", type=Path)
    parser.add_argument("db")
    parser.add_argument("--kill", choices=POINTS)
    parser.add_argument("--nth", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {os.getpid()} %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    # As the module tests.sagas.crash_child, so the inbox names handlers alike everywhere.
    from tests.sagas import crash_child

    sys.exit(crash_child.main())
