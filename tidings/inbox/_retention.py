"""Retention: marks older than the inbox's ``retention`` are deleted in the
background, in batches, at most every ``retention / 100`` and at least every 5
minutes while events flow. No SQLAlchemy is imported until a sweep runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

    from tidings.inbox._sides import Side, Sides

__all__ = ["SWEEP_BATCH", "Retention"]

log = logging.getLogger("tidings.inbox")

SWEEP_BATCH = 5000  # marks deleted per transaction: short write locks on SQLite
SWEEP_MAX_INTERVAL = 300.0  # seconds
SWEEP_MIN_INTERVAL = 1.0


class Retention:
    """When the marks of ``table`` older than ``keep`` (None: keep all) are deleted, and
    the deleting."""

    def __init__(self, table: sa.Table, keep: timedelta | None) -> None:
        self.table = table
        self.keep = keep
        if keep is None:
            self.every: float | None = None
        else:
            every = keep.total_seconds() / 100
            self.every = max(SWEEP_MIN_INTERVAL, min(SWEEP_MAX_INTERVAL, every))
        self._next = 0.0  # the first handled event starts one
        self._running: asyncio.Task[None] | None = None
        self._closing = False
        self._statement: Any = None

    def due(self) -> bool:
        """Whether a background sweep is due (called after every delivery)."""
        return self.every is not None and time.monotonic() >= self._next

    def start(self, sweep: Callable[[], Awaitable[int]]) -> None:
        """Run ``sweep`` (the inbox's :meth:`~tidings.Inbox.sweep`) in the background,
        unless one runs; the next is due ``every`` seconds from now."""
        assert self.every is not None
        self._next = time.monotonic() + self.every
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._quietly(sweep))

    async def _quietly(self, sweep: Callable[[], Awaitable[int]]) -> None:
        try:
            deleted = await sweep()
        except Exception:
            log.warning("inbox: deleting old marks from %s failed", self.table, exc_info=True)
            return
        if deleted:
            log.debug("inbox: deleted %d marks older than %s", deleted, self.keep)

    def _delete(self) -> Any:
        if self._statement is None:
            import sqlalchemy as sa

            t = self.table
            oldest = (
                sa.select(t.c.consumer, t.c.event_id)
                .where(t.c.handled_at < sa.bindparam("cutoff"))
                .limit(SWEEP_BATCH)
            )
            self._statement = sa.delete(t).where(sa.tuple_(t.c.consumer, t.c.event_id).in_(oldest))
        return self._statement

    async def delete(self, sides: Sides, side: Side, cutoff: datetime) -> int:
        """Delete the marks older than ``cutoff``, a batch per transaction; return how
        many. Stops after the batch in hand when the inbox closes."""
        statement = self._delete()
        if not side.is_async:
            return await sides.threads.run(self._delete_sync, side, statement, cutoff)
        deleted = 0
        while True:
            async with side.engine.begin() as conn:
                result = await conn.execute(statement, {"cutoff": cutoff})
            count: int = result.rowcount
            deleted += count
            if count < SWEEP_BATCH or self._closing:
                return deleted

    def _delete_sync(self, side: Side, statement: Any, cutoff: datetime) -> int:
        deleted = 0
        while True:
            with side.engine.begin() as conn:
                count: int = conn.execute(statement, {"cutoff": cutoff}).rowcount
            deleted += count
            if count < SWEEP_BATCH or self._closing:
                return deleted

    async def close(self) -> None:
        """Wait for a running sweep: not cancelled, as its thread would go on with a
        connection; it stops after the batch it is deleting."""
        if self._running is None:
            return
        self._closing = True
        try:
            with contextlib.suppress(Exception):
                await self._running
        finally:
            self._closing = False
        self._running = None
