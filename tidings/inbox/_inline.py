"""An AsyncEngine on an inbox's SQLite file whose statements run where they are
awaited, on the event loop's thread, with no trip to aiosqlite's thread: for the
``AsyncSession`` of ``async def`` handlers in a lane's batch (decision 0014).

The batch holds the file's write lock (``BEGIN IMMEDIATE``, taken in a thread), so
none of its statements waits for a lock, as reads never do in WAL mode: they cost
what SQLite's work costs, which is less than two hops between threads. Waiting work,
the lock and the commit's fsync, is done in threads by the batch, on the sqlite3
connection underneath (``_sides.raw_sqlite``). It is SQLAlchemy's aiosqlite dialect
over aiosqlite's own
``Connection`` class, told to do each call at once instead of queueing it to its
thread: results, ``AsyncSession.connection()``, streaming and the rest behave as with
aiosqlite. Nothing else uses this engine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["inline_engine"]


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection, each call done where it is awaited (no thread)."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> _InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:  # no thread to start
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def inline_engine(url: URL, timeout: float) -> AsyncEngine:
    """An AsyncEngine (aiosqlite dialect) on ``url``'s SQLite file, inline."""
    path = url.database
    assert path  # the inbox refuses in-memory SQLite

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(path, timeout=timeout, check_same_thread=False)

    async def connect() -> Any:
        return await _InlineConnection(connector, 64)

    return create_async_engine(
        url.set(drivername="sqlite+aiosqlite"), async_creator=connect, max_overflow=-1
    )
