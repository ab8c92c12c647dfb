"""Helpers for tests of code that uses tidings: wait for a condition, run an app's
worker in the background, fetch a number of records, read what a topic holds."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tidings.middleware import Retry, default_middleware
from tidings.transport import Consumer, Record, Transport
from tidings.worker import Worker

if TYPE_CHECKING:
    from tidings.app import Tidings

__all__ = ["JOIN_TIMEOUT", "drain", "eventually", "running", "stored"]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Wait until ``check()`` is true, or fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(interval)


JOIN_TIMEOUT = 60.0  # seconds running() waits for a worker's groups to join


@asynccontextmanager
async def running(app: Tidings, **options: Any) -> AsyncIterator[Worker]:
    """Run ``app``'s subscribers in the background while the block runs::

        async with app, running(app) as worker:
            await app.publish(...)
            await eventually(lambda: handled)

    The block starts once every group has joined (on Kafka that takes a moment), so a
    group that starts at "latest" sees what the block publishes. Options go to
    :class:`~tidings.worker.Worker`; commits are frequent and retries quick (at most
    20 ms apart) by default, to keep tests fast. On exit the worker stops and commits.
    """
    options.setdefault("commit_interval", 0.01)
    options.setdefault("middleware", default_middleware(Retry(base_delay=0.01, max_delay=0.02)))
    worker = Worker(app, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.ensure_future(worker.ready.wait())
    await asyncio.wait([ready, task], timeout=JOIN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()  # the worker failed to start: its error
        raise AssertionError("the worker ended before its groups joined")
    if not worker.ready.is_set():
        stop.set()
        await asyncio.wait_for(task, 30)
        raise AssertionError(f"the worker's groups did not join within {JOIN_TIMEOUT} s")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        # A handler task that died leaves an "exception never retrieved" for the garbage
        # collector; collect it here, not while pytest formats a failure (CPython 3.11.7
        # then fails with "AST constructor recursion depth mismatch": cpython gh-106905).
        gc.collect()


async def drain(consumer: Consumer, count: int, timeout: float = 10.0) -> list[Record]:
    """Fetch until ``count`` records arrived (or fail after ``timeout``)."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"fetched {len(out)} of {count} records within {timeout}s")
        out += await consumer.fetch(count - len(out), timeout=min(remaining, 1.0))
    return out


async def stored(transport: Transport, topic: str) -> list[Record]:
    """Every record ``topic`` holds, partition by partition, each in offset order (what
    a test asserts was, or was not, written); none if there is no such topic."""
    out: list[Record] = []
    for info in await transport.topics():
        if info.name == topic:
            for p in info.partitions:
                out += await transport.read(topic, p.partition, p.start, p.end - p.start)
    return out
