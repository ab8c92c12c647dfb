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

import collections
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
)
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.ext.asyncio.result import _ensure_sync_result
from sqlalchemy.util import EMPTY_DICT, immutabledict
from sqlalchemy.util.concurrency import await_, in_greenlet

__all__ = ["InlineSession", "inline_engine"]

# What AsyncSession.execute adds to every execution: its rows read at once.
_EXECUTE_OPTIONS = immutabledict({"prebuffer_rows": True})
# Options asking for a server-side cursor: SQLAlchemy's way (it refuses them in execute).
_STREAMING = frozenset({"stream_results", "yield_per"})


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


class _InlineCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor over the sqlite3 cursor, each call made at once
    (no ``await_``: no greenlet switch per driver call)."""

    __slots__ = ()

    def _make_new_cursor(self, connection: Any) -> Any:
        driver: sqlite3.Connection = connection._conn  # aiosqlite's, underneath
        return driver.cursor()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _async_soft_close(self) -> None:
        if self._soft_closed_memoized:
            return
        self._soft_closed_memoized = self._soft_closed_memoized.union(
            {"description": self._cursor.description}
        )
        cursor: Any = self._cursor  # sqlite3's (typed as an async one)
        cursor.close()

    def close(self) -> None:
        self._rows.clear()
        if not self._soft_closed_memoized:
            cursor: Any = self._cursor
            cursor.close()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        cursor: Any = self._cursor
        try:
            if parameters is None:
                result = cursor.execute(operation)
            else:
                result = cursor.execute(operation, parameters)
            if cursor.description:
                self._rows = collections.deque(cursor.fetchall())
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        _switched()
        return result

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        try:
            cursor: Any = self._cursor
            result = cursor.executemany(operation, seq_of_parameters)
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        _switched()
        return result


async def _nothing() -> None:
    pass


def _switched() -> None:
    """One switch out of the greenlet, if the statement runs in one: SQLAlchemy's
    ``AsyncConnection.execute`` refuses a run without (``AwaitRequired``). Not in one
    (:class:`InlineSession`): nothing."""
    if in_greenlet():
        await_(_nothing())


class _InlineAdapted(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection whose cursors are :class:`_InlineCursor`."""

    __slots__ = ()
    _cursor_cls = _InlineCursor


def _inline_cursors(dbapi_connection: Any, _record: Any) -> None:
    # Same slots: the adapter SQLAlchemy made, with inline cursors from here on.
    dbapi_connection.__class__ = _InlineAdapted


def inline_engine(url: URL, timeout: float) -> AsyncEngine:
    """An AsyncEngine (aiosqlite dialect) on ``url``'s SQLite file, inline."""
    path = url.database
    assert path  # the inbox refuses in-memory SQLite

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(path, timeout=timeout, check_same_thread=False)

    async def connect() -> Any:
        return await _InlineConnection(connector, 64)

    engine = create_async_engine(
        url.set(drivername="sqlite+aiosqlite"), async_creator=connect, max_overflow=-1
    )
    event.listen(engine.sync_engine, "connect", _inline_cursors, insert=True)
    return engine


class InlineSession(AsyncSession):
    """The ``AsyncSession`` of the inline engine, bound to a batch's connection: its
    ``execute`` and ``scalar`` run the ``Session``'s at once, with no greenlet (their
    statements never switch out: :class:`_InlineCursor`)."""

    async def execute(
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = EMPTY_DICT,
        bind_arguments: Any = None,
        **kw: Any,
    ) -> Any:
        options = _EXECUTE_OPTIONS
        if execution_options:
            if _STREAMING.intersection(execution_options):  # server-side: aiosqlite's
                return await super().execute(
                    statement, params, execution_options=execution_options,
                    bind_arguments=bind_arguments, **kw,
                )  # fmt: skip
            options = immutabledict(execution_options).union(_EXECUTE_OPTIONS)
        result = self.sync_session.execute(
            statement, params, execution_options=options, bind_arguments=bind_arguments, **kw
        )
        return await _ensure_sync_result(result, self.execute)

    async def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        return (await self.execute(statement, params, **kw)).scalar()
