"""SQLAlchemy helpers shared by the outbox, the delayed-event scheduler and the inbox:
database URLs to engines, tables created if missing (twice when two processes race),
blocking database work in threads, and a UTC column type.

Importing this module imports SQLAlchemy: only modules that need it anyway import it
(``import tidings`` does not).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "Threads",
    "create_missing",
    "is_async",
    "make_engine",
    "of_kind",
    "safe_url",
    "transaction",
    "twice",
    "twice_async",
    "with_psycopg",
]

T = TypeVar("T")


# -- URLs and engines -------------------------------------------------------------------


def with_psycopg(url: URL) -> URL:
    """``postgres://`` and ``postgresql://`` as psycopg 3's URL: SQLAlchemy alone would
    pick psycopg2 (or nothing, for ``postgres``); psycopg 3 is the one tidings uses."""
    if url.drivername in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    return url


# The same database through a driver of the other kind (psycopg 3 is both).
_SYNC_DRIVERS = {
    "aiosqlite": "sqlite",
    "asyncpg": "postgresql+psycopg",
    "psycopg_async": "postgresql+psycopg",
}
_ASYNC_DRIVERS = {
    "pysqlite": "sqlite+aiosqlite",
    "psycopg": "postgresql+psycopg",
    "psycopg2": "postgresql+psycopg",
}


def of_kind(url: URL, *, is_async: bool) -> URL:
    """``url`` with a driver of the kind asked for (async or not), if it has another."""
    drivers = _ASYNC_DRIVERS if is_async else _SYNC_DRIVERS
    drivername = drivers.get(url.get_driver_name())
    return url if drivername is None else url.set(drivername=drivername)


def make_engine(url: URL, *, is_async: bool | None = None, **options: Any) -> Any:
    """A new Engine, or AsyncEngine if ``is_async`` (default: if ``url``'s driver is
    an asyncio one). Raises what SQLAlchemy raises for a bad URL or a missing driver."""
    if is_async is None:
        is_async = bool(url.get_dialect().is_async)
    if is_async:
        from sqlalchemy.ext.asyncio import create_async_engine

        return create_async_engine(url, **options)
    return sa.create_engine(url, **options)


def safe_url(db: str | URL | Engine | AsyncEngine) -> str:
    """``db`` for messages, without its password."""
    if isinstance(db, str):
        try:
            return sa.make_url(db).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return repr(db)
    if isinstance(db, URL):
        return db.render_as_string(hide_password=True)
    return db.url.render_as_string(hide_password=True)


@functools.cache
def _asyncio_types() -> tuple[type[Any], ...]:
    """AsyncEngine, AsyncSession, AsyncConnection, async_scoped_session; none without
    greenlet (then there can be no such object to recognise)."""
    try:
        from sqlalchemy.ext.asyncio import (
            AsyncConnection,
            AsyncEngine,
            AsyncSession,
            async_scoped_session,
        )
    except ImportError:
        return ()
    return (AsyncEngine, AsyncSession, AsyncConnection, async_scoped_session)


def is_async(obj: object) -> bool:
    """Whether ``obj`` is one of SQLAlchemy's asyncio engines, connections or sessions."""
    kinds = _asyncio_types()
    return bool(kinds) and isinstance(obj, kinds)


# -- tables ------------------------------------------------------------------------------


def create_missing(conn: Connection, tables: Iterable[sa.Table]) -> None:
    """CREATE TABLE and CREATE INDEX ... IF NOT EXISTS for ``tables``: not
    ``create_all()``'s look-then-create, so that processes creating them at once do not
    fail on each other's table (SQLite; PostgreSQL may still refuse the second, see
    :func:`twice`)."""
    for table in tables:
        conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))


def twice(
    create: Callable[[], T],
    errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> T:
    """``create()``, and once more if it raised ``errors``: two processes creating one
    table at once, PostgreSQL may refuse the second ``CREATE ... IF NOT EXISTS``; the
    table is there the second time (or the second try raises the real problem)."""
    try:
        return create()
    except errors:
        return create()


async def twice_async(
    create: Callable[[], Awaitable[T]],
    errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> T:
    """:func:`twice`, awaited."""
    try:
        return await create()
    except errors:
        return await create()


# -- threads --------------------------------------------------------------------------------


class Threads:
    """Threads for the blocking work of sync engines, started on first use: ``size`` at
    most (they grow only as far as they are used), named ``name``."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.size, thread_name_prefix=self.name)
        return self._pool.submit(fn, *args)

    async def run(
        self, fn: Callable[..., T], *args: Any, undo: Callable[[T], None] | None = None
    ) -> T:
        """``fn(*args)`` in a thread. ``undo``: if the wait is cancelled, called with
        what ``fn`` returns once it has returned (e.g. to close a connection)."""
        future = self.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if undo is not None:
                future.add_done_callback(functools.partial(_undo_result, undo))
            raise

    def shutdown(self, *, wait: bool) -> None:
        """Stop the threads (new work starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None

    async def stop(self) -> None:
        """Stop the threads once the work given to them has ended (waited for in
        another thread; new work meanwhile starts new ones): what a cancelled task
        left to them, e.g. closing a connection, is done when this returns."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)


def _undo_result(undo: Callable[[Any], None], future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None and future.result() is not None:
        undo(future.result())


async def transaction(
    engine: Engine | AsyncEngine, job: Callable[[Connection], T], threads: Threads | None = None
) -> T:
    """``job(conn)`` in one transaction, without blocking the loop: with a sync engine
    in ``threads`` (default: asyncio's), with an AsyncEngine through ``run_sync``.
    Writing each piece once, as sync code on a ``Connection``, keeps the SQL of both
    kinds of engine the same."""
    if not isinstance(engine, Engine):
        async with engine.begin() as aconn:
            return await aconn.run_sync(job)

    def in_thread() -> T:
        with engine.begin() as conn:
            return job(conn)

    if threads is None:
        return await asyncio.to_thread(in_thread)
    return await threads.run(in_thread)
