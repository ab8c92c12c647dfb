"""The program the crash matrix runs and kills: ``python -m tests.crash.child MODE DIR ...``.

Every process works on the same two real SQLite files in ``DIR``: the event log
(``log.db``, 4 partitions, 1 s partition leases, so a dead member's partitions are
taken over within about a second) and the service's own database (``app.db``: the
outbox table, the business rows ``orders``, the inbox marks and the handlers'
``effects``).

Modes:

- ``produce DIR --count N``: N business rows, each with its event added to the outbox
  in the same transaction, one transaction per row; the process SIGKILLs itself right
  after the last commit, before any relay ran.
- ``relay DIR [--kill-after-append K]``: an outbox relay that moves rows until the
  outbox is empty (exit 0), or SIGKILLs itself right after its K-th append to the log
  returned, before it deleted the rows it had just published.
- ``worker DIR [--relay] [--sequenced] [kill options]``: a worker running group ``fx``
  (a plain ``def`` handler with an :class:`~tidings.inbox.Inbox` on ``app.db``: its
  effect row and the inbox mark commit together) until SIGTERM, then it writes its
  :class:`~tidings.middleware.Stats` to ``stats-<pid>.json``. ``--relay`` runs an
  outbox relay beside it. Kill points: ``--kill-at-commit-after K`` (at the first
  offset commit once K handlers have returned: effects committed, offsets not),
  ``--kill-in-handler N`` (inside the N-th handler call, after its effect was written
  and before its lane's batch committed), ``--kill-after-batch-commit B`` (right
  after the inbox's B-th batch commit: a lane's effects and marks committed, their
  offsets not), ``--kill-dlq-write M --dlq-kill-when
  after|before`` (right after, or right before, the M-th append to the group's
  dead-letter topic: a dead letter, or after a replay a ``resolved`` mark).
- ``replay DIR [--kill-after-retry-append K] [--batch B]``: ``tidings dlq replay`` of
  every dead letter of ``fx``, SIGKILLed right after its K-th append to ``fx.retry``
  returned, before the ``replayed`` mark of that batch.

No kill point needs a hook in tidings: the child wraps the method at that point (the
transport's ``append``, the SQLite consumer's ``commit``, the inbox batch's ``commit``)
or kills itself in its own
handler. Every handler call appends one line to ``attempts.txt`` (``O_APPEND``,
unbuffered, written before anything else the call does): ``event_id key seq pid R|F``,
``F`` for a call that is going to fail on purpose. Events whose payload says
``"fail": true`` fail until the file ``DIR/healed`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tidings import Context, Tidings
from tidings.dead_letters import Filter, dlq_topic, replay, retry_topic
from tidings.inbox import Inbox
from tidings.inbox._batch import Batch
from tidings.middleware import Retry, default_middleware
from tidings.outbox import Outbox
from tidings.transport import Transport
from tidings.transports.sqlite import SQLiteConsumer
from tidings.worker import Worker

TOPIC = "orders"
GROUP = "fx"
TYPE = "order.placed"
PARTITIONS = 4
LEASE = 1.0  # seconds: the log's partition leases and the outbox relay's lease
ATTEMPTS = "attempts.txt"
HEALED = "healed"

metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    metadata,
    # AUTOINCREMENT: n is the order in which effects were committed, never reused.
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),  # no unique key: doubles show
    sa.Column("key", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sqlite_autoincrement=True,
)
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sqlite_autoincrement=True,
)


def log_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'log.db'}?partitions={PARTITIONS}&lease={LEASE:g}"


def db_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'app.db'}"


def payload(key: str, seq: int, fail: bool = False) -> dict[str, Any]:
    return {"key": key, "seq": seq, "fail": fail}


def item(i: int, keys: int) -> tuple[str, int]:
    """The key and per-key sequence number of the i-th event of a run."""
    return f"k{i % keys}", i // keys


def build(folder: Path, *, sequenced: bool = False) -> tuple[Tidings, Outbox, Inbox]:
    app = Tidings(log_url(folder), service="crash")
    app.topic(TOPIC, partitions=PARTITIONS)
    app.group(GROUP, sequenced=sequenced)
    outbox = Outbox(app, db_url(folder), topic=TOPIC)
    inbox = Inbox(db_url(folder))
    app.subscriber(TOPIC, group=GROUP, types=[TYPE], inbox=inbox)(handle)
    return app, outbox, inbox


async def setup_db(folder: Path) -> None:
    """Create the service's tables (WAL mode, as the inbox would set it)."""
    engine = sa.create_engine(db_url(folder))
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        metadata.create_all(engine)
    finally:
        engine.dispose()
    _, outbox, inbox = build(folder)
    outbox.create_table()
    await inbox.create_table_async()
    await inbox.close()


def produce_rows(
    engine: sa.Engine, outbox: Outbox, count: int, keys: int, *, one_transaction: bool
) -> list[str]:
    """Business rows with their events in the outbox; the event ids, in order."""
    ids = []

    def one(session: Session, i: int) -> None:
        key, seq = item(i, keys)
        event = outbox.add(session, payload(key, seq), type=TYPE, subject=key)
        session.execute(orders.insert().values(key=key, seq=seq, event_id=event.id))
        ids.append(event.id)

    if one_transaction:
        with Session(engine) as session, session.begin():
            for i in range(count):
                one(session, i)
        return ids
    for i in range(count):
        with Session(engine) as session, session.begin():
            one(session, i)
    return ids


# -- dying at the exact point ---------------------------------------------------------


def die(where: str) -> None:
    """SIGKILL this process: no finally, no atexit, no flush of anything buffered."""
    os.write(2, f"crash child {os.getpid()}: SIGKILL {where}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def kill_on_append(transport: Transport, topic: str, nth: int, when: str, where: str) -> None:
    """Make the ``nth`` append to ``topic`` kill the process before it is made, or
    right after the log acknowledged it (``when``)."""
    original = transport.append
    count = 0

    async def append(name: str, records: Any) -> list[tuple[int, int]]:
        nonlocal count
        if name != topic:
            return await original(name, records)
        count += 1
        mine = count  # appends to the topic may be in flight together
        if mine == nth and when == "before":
            die(f"before append #{nth} to {topic}: {where}")
        placed = await original(name, records)
        if mine == nth and when == "after":
            die(f"after append #{nth} to {topic} ({len(records)} records): {where}")
        return placed

    transport.append = append  # type: ignore[method-assign,assignment]


class _State:
    """What this process's handler needs to know (set by ``main``)."""

    def __init__(self) -> None:
        self.folder = Path(".")
        self.fd = -1
        self.calls = itertools.count(1)
        self.kill_in_handler = 0
        self.done = 0
        self.fetches: list[int] = []  # records of the topic in each fetch so far
        self.lock = threading.Lock()


_state = _State()


def handle(data: dict[str, Any], ctx: Context) -> None:
    """The group's handler: one effect row through the inbox's session."""
    n = next(_state.calls)
    fails = bool(data.get("fail")) and not (_state.folder / HEALED).exists()
    line = f"{ctx.id} {data['key']} {data['seq']} {os.getpid()} {'F' if fails else 'R'}\n"
    os.write(_state.fd, line.encode())
    if fails:
        raise RuntimeError(f"order {data['key']}/{data['seq']} cannot be handled yet")
    ctx.session.execute(
        effects.insert().values(event_id=ctx.id, key=data["key"], seq=data["seq"], pid=os.getpid())
    )
    if n == _state.kill_in_handler:
        die(
            f"in handler call #{n} ({data['key']}/{data['seq']}), effect written, not "
            f"committed; fetched={sum(_state.fetches)} in fetches of {_state.fetches}"
        )
    with _state.lock:
        _state.done += 1


def kill_at_commit(after: int) -> None:
    """The first offset commit of group ``fx`` once ``after`` handlers returned kills
    the process: their effects are committed, their offsets are not."""
    original = SQLiteConsumer.commit

    async def commit(self: SQLiteConsumer, offsets: Any) -> None:
        if offsets and self.group == GROUP and _state.done >= after:
            die(f"at the offset commit after {_state.done} handled: {dict(offsets)}")
        await original(self, offsets)

    SQLiteConsumer.commit = commit  # type: ignore[method-assign]


def kill_after_batch_commit(nth: int) -> None:
    """Right after the inbox's ``nth`` batch commit (a lane's events' effects and marks
    committed together), before the worker commits their offsets."""
    original = Batch.commit
    commits = itertools.count(1)

    async def commit(self: Batch) -> None:
        await original(self)
        if next(commits) == nth:
            die(
                f"after the inbox's batch commit #{nth} ({self.count} events), their "
                f"offsets not committed; {_state.done} handled"
            )

    Batch.commit = commit  # type: ignore[method-assign]


def count_fetched() -> None:
    """Note the records fetched from the topic, per fetch (for the kill message)."""
    original = SQLiteConsumer.fetch

    async def fetch(self: SQLiteConsumer, max_records: int, timeout: float) -> Any:
        records = await original(self, max_records, timeout)
        if mine := sum(1 for r in records if r.topic == TOPIC):
            _state.fetches.append(mine)
        return records

    SQLiteConsumer.fetch = fetch  # type: ignore[method-assign]


# -- the modes ---------------------------------------------------------------------------


def cmd_produce(args: argparse.Namespace) -> int:
    _, outbox, _ = build(args.dir)
    engine = sa.create_engine(db_url(args.dir))
    produce_rows(engine, outbox, args.count, args.keys, one_transaction=False)
    die(f"after the commit of the last of {args.count} outbox rows, before any relay ran")
    return 1


async def cmd_relay(args: argparse.Namespace) -> int:
    app, outbox, _ = build(args.dir)
    if args.kill_after_append:
        kill_on_append(
            app.transport, TOPIC, args.kill_after_append, "after",
            "relay published, rows not yet deleted",
        )  # fmt: skip
    relay = outbox.relay(batch=args.batch, poll_interval=0.02, lease=LEASE)
    deadline = time.monotonic() + 30
    async with app:
        try:
            while (await outbox.status()).pending:
                if time.monotonic() > deadline:
                    print("relay: rows still pending after 30 s", file=sys.stderr)
                    return 1
                await relay.relay_once()
                if not relay.holding:  # a dead relay's lease has not run out yet
                    await asyncio.sleep(0.1)
        finally:
            await relay.close()
            await outbox.dispose()
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    app, outbox, inbox = build(args.dir, sequenced=args.sequenced)
    _state.kill_in_handler = args.kill_in_handler
    if args.kill_in_handler:
        count_fetched()
    if args.kill_at_commit_after:
        kill_at_commit(args.kill_at_commit_after)
    if args.kill_after_batch_commit:
        kill_after_batch_commit(args.kill_after_batch_commit)
    if args.kill_dlq_write:
        kill_on_append(
            app.transport, dlq_topic(GROUP), args.kill_dlq_write, args.dlq_kill_when,
            "writing to the dead-letter topic, offset not committed",
        )  # fmt: skip
    worker = Worker(
        app,
        [GROUP],
        middleware=default_middleware(Retry(max_attempts=2, base_delay=0.01, max_delay=0.02)),
        components=False,
        shutdown_timeout=10,
    )
    stop = asyncio.Event()
    async with app:
        worker.install_signal_handlers(stop)
        jobs = [worker.run(stop)]
        if args.relay:
            jobs.append(outbox.relay(batch=args.batch, poll_interval=0.02, lease=LEASE).run(stop))
        print(f"worker {os.getpid()} running", file=sys.stderr, flush=True)
        await asyncio.gather(*jobs)
    await inbox.close()
    await outbox.dispose()
    stats = args.dir / f"stats-{os.getpid()}.json"
    stats.write_text(json.dumps(asdict(worker.stats)))
    return 0


async def cmd_replay(args: argparse.Namespace) -> int:
    app = Tidings(log_url(args.dir), service="crash")
    if args.kill_after_retry_append:
        kill_on_append(
            app.transport, retry_topic(GROUP), args.kill_after_retry_append, "after",
            "replay sent a batch, not yet marked replayed",
        )  # fmt: skip
    async with app:
        sent = await replay(app.transport, GROUP, Filter(), batch=args.batch)
    print(f"replayed {sent}", file=sys.stderr)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.child")
    sub = parser.add_subparsers(dest="mode", required=True)
    produce = sub.add_parser("produce")
    produce.add_argument("--count", type=int, required=True)
    produce.add_argument("--keys", type=int, default=20)
    relay = sub.add_parser("relay")
    relay.add_argument("--kill-after-append", type=int, default=0)
    relay.add_argument("--batch", type=int, default=100)
    worker = sub.add_parser("worker")
    worker.add_argument("--relay", action="store_true")
    worker.add_argument("--batch", type=int, default=100)
    worker.add_argument("--sequenced", action="store_true")
    worker.add_argument("--kill-at-commit-after", type=int, default=0)
    worker.add_argument("--kill-in-handler", type=int, default=0)
    worker.add_argument("--kill-after-batch-commit", type=int, default=0)
    worker.add_argument("--kill-dlq-write", type=int, default=0)
    worker.add_argument("--dlq-kill-when", choices=["before", "after"], default="after")
    again = sub.add_parser("replay")
    again.add_argument("--kill-after-retry-append", type=int, default=0)
    again.add_argument("--batch", type=int, default=500)
    for p in (produce, relay, worker, again):
        p.add_argument("dir", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {os.getpid()} %(name)s %(message)s"
    )
    _state.folder = args.dir
    _state.fd = os.open(args.dir / ATTEMPTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if args.mode == "produce":
        return cmd_produce(args)
    run = {"relay": cmd_relay, "worker": cmd_worker, "replay": cmd_replay}[args.mode]
    return asyncio.run(run(args))


if __name__ == "__main__":
    # Run as the module ``tests.crash.child`` (not ``__main__``), so that the inbox
    # names the handler the same in every process: "fx:tests.crash.child.handle".
    from tests.crash import child

    sys.exit(child.main())
