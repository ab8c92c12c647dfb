"""The worker the K-way crash test runs and kills: ``python -m tests.keyed_crash_child
DIR``.

Two groups with ``concurrency=8`` read topic ``calls`` of the SQLite log ``DIR/log.db``
(2 partitions, 2 s leases: a successor waits one out; 1 s let a loaded machine's late
renewals give partitions up) until SIGTERM: ``plain`` appends ``key seq`` to
``DIR/plain.txt`` for each call (at least once), ``once`` inserts a row into
``effects`` of ``DIR/app.db`` through its inbox's session (exactly once). Calls of
events with ``seq`` >= ``HELD`` wait until the file ``DIR/go`` exists: the test kills
the first worker with such calls under way, the others done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tidings import Context, Inbox, Tidings
from tidings.middleware import Retry, default_middleware
from tidings.worker import Worker

TOPIC = "calls"
PARTITIONS = 2
HELD = 4


def log_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'log.db'}?partitions={PARTITIONS}&lease=2"


def db_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'app.db'}"


def build(folder: Path) -> tuple[Tidings, Inbox]:
    app = Tidings(log_url(folder), service="keyed-crash", schemas="off")
    app.topic(TOPIC, partitions=PARTITIONS)
    app.group("plain", concurrency=8)
    app.group("once", concurrency=8)
    inbox = Inbox(db_url(folder))
    lines = os.open(folder / "plain.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    go = folder / "go"

    @app.subscriber(TOPIC, group="plain")
    async def plain(data: dict[str, Any]) -> None:
        while data["seq"] >= HELD and not go.exists():  # noqa: ASYNC110 (another process's file)
            await asyncio.sleep(0.02)
        os.write(lines, f"{data['key']} {data['seq']}\n".encode())

    @app.subscriber(TOPIC, group="once", inbox=inbox)
    def once(data: dict[str, Any], ctx: Context) -> None:
        while data["seq"] >= HELD and not go.exists():
            time.sleep(0.02)
        ctx.session.execute(
            sa.text("INSERT INTO effects (key, seq) VALUES (:k, :s)"),
            {"k": data["key"], "s": data["seq"]},
        )

    return app, inbox


async def run(folder: Path) -> int:
    app, inbox = build(folder)
    worker = Worker(
        app, middleware=default_middleware(Retry(base_delay=0.01, max_delay=0.05)),
        commit_interval=0.02, shutdown_timeout=10,
    )  # fmt: skip
    print(f"keyed worker {os.getpid()} starting", file=sys.stderr, flush=True)
    await worker.serve()  # until SIGTERM (or the SIGKILL the test sends)
    await inbox.close()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {os.getpid()} %(message)s")
    return asyncio.run(run(Path(sys.argv[1])))


if __name__ == "__main__":
    # As the module tests.keyed_crash_child, so the inbox names handlers alike everywhere.
    from tests import keyed_crash_child

    sys.exit(keyed_crash_child.main())
