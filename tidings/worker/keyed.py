"""Up to K events of one partition handled at once, of distinct keys: a group's
``concurrency`` (docs/decisions/0033-key-concurrency-within-a-partition.md).

A lane of such a group takes records off its queue in offset order. Each key in
flight has a line of its records, handled one after the other by a task of its own
(per-key order: an event waits behind the one of its key under way, its retries
included); at most K keys are in flight, and a record of a new key waits at the head
of the queue until one of them is done. Keyless records have no order to keep: each
is a key of its own.

Offsets are committed only below the lowest unfinished record (the window's
contiguous finished prefix), so a crash, a revocation or a shutdown leaves every
unfinished record, and those after it, to be delivered again (at least once; an inbox
makes it once). There is no lane batch: each event goes through its chain on its own
(an inbox commits it in a transaction of its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from tidings.logs import at
from tidings.transport import Record

__all__ = ["KeyedDrain"]

log = logging.getLogger("tidings.worker")


class KeyedDrain:
    """Works through one lane's ``queue``, ``concurrency`` keys at a time, until the
    queue is empty and nothing is in flight, or it is ``closing`` (then what runs
    finishes, and nothing more starts). ``wake`` is set when records are added.

    ``advance(record)``: the records up to ``record`` are finished, its offset + 1 may
    be committed; ``release(n)``: ``n`` records taken off the queue are done with
    (committable, or given up); ``pause()``: wait before trying a record again whose
    handling raised past the middleware."""

    def __init__(
        self,
        group: str,
        queue: deque[Record],
        wake: asyncio.Event,
        concurrency: int,
        *,
        take: Callable[[Record], Awaitable[None]],
        closing: Callable[[], bool],
        advance: Callable[[Record], None],
        release: Callable[[int], None],
        pause: Callable[[], Awaitable[None]],
    ) -> None:
        self.group = group
        self.queue = queue
        self.wake = wake
        self.concurrency = concurrency
        self.take = take
        self.closing = closing
        self.advance = advance
        self.release = release
        self.pause = pause
        self.window: deque[Record] = deque()  # off the queue, not committable yet, in order
        self.finished: set[int] = set()  # offsets in the window that are finished
        self.lines: dict[object, deque[Record]] = {}  # per key in flight, its records
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.wake.clear()
                if not self.closing():
                    self._admit(loop)
                if not self.tasks:
                    return
                await self.wake.wait()
        except asyncio.CancelledError:
            # Abandoned (a revocation or a shutdown that waited long enough): the calls
            # under way are cancelled; what finished below them may still be committed.
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            raise
        finally:
            self.release(len(self.window))  # unfinished, or after an unfinished one
            self.window.clear()
            self.finished.clear()

    def _admit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take records off the queue's head while their key is in flight (they join
        its line) or a key may start; stop at the first of a new key when K run."""
        queue, lines, window = self.queue, self.lines, self.window
        while queue:
            record = queue[0]
            key: object = record.key if record.key is not None else record.offset
            line = lines.get(key)
            if line is None:
                if len(lines) >= self.concurrency:
                    return
                line = lines[key] = deque()
                task = loop.create_task(self._key(key, line))
                self.tasks.add(task)
                task.add_done_callback(self._ended)
            queue.popleft()
            line.append(record)
            window.append(record)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.wake.set()

    async def _key(self, key: object, line: deque[Record]) -> None:
        """One key's records, in order; a record whose handling raised (past the
        middleware) is tried again after a pause, and holds its key meanwhile."""
        try:
            while line and not self.closing():
                record = line[0]
                try:
                    await self.take(record)
                except Exception:
                    log.exception(
                        "group %s: %s[%d]@%d was not handled; trying again shortly",
                        self.group, record.topic, record.partition, record.offset,
                        extra=at(self.group, record),
                    )  # fmt: skip
                    await self.pause()
                    continue
                line.popleft()
                self._finished(record)
        finally:
            del self.lines[key]

    def _finished(self, record: Record) -> None:
        """Mark ``record`` finished; advance past the window's finished prefix."""
        window, finished = self.window, self.finished
        finished.add(record.offset)
        last, count = None, 0
        while window and window[0].offset in finished:
            last = window.popleft()
            finished.discard(last.offset)
            count += 1
        if last is not None:
            self.advance(last)
            self.release(count)
