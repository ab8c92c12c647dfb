"""Memory of a group's dead-letter log with many resolved dead letters (issue 15,
finding 13): what :class:`~tidings.dead_letters.DeadLetterLog` holds after a refresh
when it keeps everything (``tidings dlq list --all``) and when it forgets resolved
entries and values (a worker's log).

    .venv/bin/python -m bench.bench_dead_letters [--count 1000000] [--seconds 300]

Writes ``--count`` dead letters to a fresh SQLite log (in batches, stopping early at
``--seconds``), each replayed and resolved by marks, plus ``--unresolved`` entries
left waiting; then refreshes a log in each mode and prints, as JSON lines, the bytes
it holds afterwards and the peak during the refresh (``tracemalloc``), and the ratio.
The SQLite file lives in a temporary folder on the real disk (``--dir``), removed at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sys
import tempfile
import time
import tracemalloc
from typing import Any

import orjson

from tidings import Tidings
from tidings.dead_letters import DeadLetter, DeadLetterLog, dlq_topic
from tidings.envelope import new_id

GROUP = "bench"
BATCH = 5_000  # entries per append
REPLAYED_MARK = 500  # ids per "replayed" mark, as a replay writes them
RESOLVED_MARK = 20  # ids per "resolved" mark (a worker writes one per entry)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/mail/handlers.py", line 42, in send\n'
    "    await smtp.send_message(message)\n"
    '  File "/srv/venv/lib/python3.12/site-packages/aiosmtplib/smtp.py", line 812, in send\n'
    "    raise SMTPServerDisconnected('Server not connected')\n"
    "aiosmtplib.errors.SMTPServerDisconnected: Server not connected\n"
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_entry(n: int) -> DeadLetter:
    value = orjson.dumps(
        {"specversion": "1.0", "id": new_id(), "source": "bench", "type": "task.created",
         "subject": f"task-{n}", "data": {"task_id": f"task-{n}", "note": "x" * 120}}
    )  # fmt: skip
    now = time.time()
    return DeadLetter(
        entry=new_id(), group=GROUP, reason="failed", topic="tasks", partition=n % 4,
        offset=n, timestamp=int(now * 1000), key=f"task-{n}", value=value,
        error_type="aiosmtplib.errors.SMTPServerDisconnected",
        error_message="Server not connected", traceback=TRACEBACK, attempts=5,
        first_failure=now, last_failure=now, dead_at=now, event_id=f"ev-{n}",
        type="task.created", correlationid=f"req-{n}", handler="send",
        value_size=len(value),
    )  # fmt: skip


def mark(state: str, ids: list[str]) -> tuple[None, bytes]:
    return (None, orjson.dumps({"kind": "mark", "state": state, "entries": ids, "at": 0}))


async def fill(app: Tidings, count: int, unresolved: int, seconds: float) -> int:
    """Write up to ``count`` resolved entries and ``unresolved`` waiting ones; return
    how many resolved ones were written before the deadline."""
    topic = dlq_topic(GROUP)
    await app.transport.create_topic(topic)
    deadline = time.monotonic() + seconds
    written = 0
    while written < count and time.monotonic() < deadline:
        entries = [make_entry(written + i) for i in range(min(BATCH, count - written))]
        ids = [e.entry for e in entries]
        # Dead-lettered, then replayed, then resolved: three appends, as in a group's life.
        await app.transport.append(topic, [(e.key, e.encode()) for e in entries])
        for state, size in (("replayed", REPLAYED_MARK), ("resolved", RESOLVED_MARK)):
            await asyncio.sleep(0.002)  # a later millisecond
            marks = [mark(state, ids[i : i + size]) for i in range(0, len(ids), size)]
            await app.transport.append(topic, marks)
        written += len(entries)
        if written % 100_000 < BATCH:
            progress(f"written {written:,} resolved dead letters")
    waiting = [make_entry(count + i) for i in range(unresolved)]
    await app.transport.append(topic, [(e.key, e.encode()) for e in waiting])
    return written


async def measure(app: Tidings, *, forget: bool) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    dead = DeadLetterLog(app.transport, GROUP, resolved=not forget, values=not forget)
    started = time.perf_counter()
    await dead.refresh()
    elapsed = time.perf_counter() - started
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figure = {
        "mode": "forget resolved, no values" if forget else "keep everything",
        "entries_held": len(dead.entries),
        "waiting": dead.depth(),
        "held_bytes": held - before,
        "peak_bytes": peak - before,
        "refresh_s": round(elapsed, 2),
    }
    del dead
    gc.collect()
    return figure


async def main(args: argparse.Namespace) -> None:
    folder = tempfile.mkdtemp(prefix="tidings-bench-dlq-", dir=args.dir)
    try:
        app = Tidings(f"sqlite:///{folder}/dlq.db?partitions={args.partitions}", service="bench")
        async with app:
            started = time.monotonic()
            written = await fill(app, args.count, args.unresolved, args.seconds)
            progress(f"wrote {written:,} resolved in {time.monotonic() - started:.0f}s")
            forget = await measure(app, forget=True)
            print(json.dumps(forget), flush=True)
            keep = await measure(app, forget=False)
            print(json.dumps(keep), flush=True)
        ratio = keep["held_bytes"] / max(forget["held_bytes"], 1)
        print(
            json.dumps(
                {
                    "resolved": written,
                    "unresolved": args.unresolved,
                    "complete": written == args.count,
                    "held_ratio_keep_over_forget": round(ratio, 1),
                    "peak_ratio_keep_over_forget": round(
                        keep["peak_bytes"] / max(forget["peak_bytes"], 1), 1
                    ),
                }
            )
        )
        mib = 1024 * 1024
        print(
            f"{written:,} resolved + {args.unresolved} waiting dead letters: a log that "
            f"keeps everything holds {keep['held_bytes'] / mib:,.1f} MiB (peak "
            f"{keep['peak_bytes'] / mib:,.1f}), one that forgets "
            f"{forget['held_bytes'] / mib:,.3f} MiB (peak {forget['peak_bytes'] / mib:,.1f}): "
            f"{ratio:,.0f}x",
            file=sys.stderr,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dead_letters")
    parser.add_argument("--count", type=int, default=1_000_000, help="resolved dead letters")
    parser.add_argument("--unresolved", type=int, default=100, help="entries left waiting")
    parser.add_argument("--seconds", type=float, default=300.0, help="bound on the writing")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where the temporary folder goes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
