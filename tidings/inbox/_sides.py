"""The inbox's ways to its database: a sync side (``Session``, raw DBAPI connections,
in threads) and an async side (``AsyncSession``, ``AsyncConnection``, on the loop).
Each side has the mark statements once, in its driver's placeholders; the sync and
async helpers below run those same statements. Engines made here, from a URL, are
the inbox's (disposed by :meth:`Sides.close`)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from tidings._sql import Threads, make_engine, of_kind, safe_url, with_psycopg
from tidings._sqlite import use_wal
from tidings.errors import ConfigError

__all__ = [
    "SQLITE_TIMEOUT",
    "THREADS",
    "Side",
    "Sides",
    "claim_in_session",
    "claim_in_session_async",
    "open_db",
    "raw_sqlite",
    "shielded",
    "use_wal_first",
]

# Threads for the database work of sync engines. Each partition being handled needs
# at most one at a time; the pool grows only as far as they are used.
THREADS = 64
SQLITE_TIMEOUT = 30.0  # seconds an inbox of its own SQLite file waits for another's lock
# The mark statements are plain SQL on the driver's connection (a fifth of the cost of
# a Core statement through a Session); placeholders by the driver's paramstyle.
_PLACEHOLDERS = {
    "qmark": "?",
    "format": "%s",
    "pyformat": "%s",
    "numeric": ":{}",
    "numeric_dollar": "${}",
}
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's DateTime stores it in SQLite


@dataclass(frozen=True, slots=True)
class Side:
    """One way to the database: sync (Session, raw connections, in threads) or async
    (AsyncSession, AsyncConnection, on the loop)."""

    is_async: bool
    maker: Any  # sessionmaker[Session] | async_sessionmaker[AsyncSession]
    engine: Any  # Engine | AsyncEngine
    owned: bool  # made here from a URL: disposed by close()
    check: str  # SQL, parameters (consumer, event_id)
    insert: str  # SQL, parameters (consumer, event_id, handled_at); adds 0 or 1 row
    text_time: bool  # SQLite: handled_at as text; else a datetime
    driver: str  # async: "aiosqlite" or "psycopg" to talk to the driver directly, else ""
    inline: bool = False  # an inline AsyncEngine on SQLite (tidings/inbox/_inline.py)
    # Closes of this side's connections under way (see shielded): Sides.close waits
    # for them before it disposes of the engine.
    pending: set[asyncio.Future[Any]] = dataclasses.field(
        default_factory=set, compare=False, repr=False
    )

    def stamp(self) -> Any:
        now = datetime.now(UTC)
        return now.strftime(_SQLITE_TIME) if self.text_time else now

    # the mark statements on a DBAPI connection (sync)

    def seen_on(self, dbapi: Any, consumer: str, event_id: str) -> bool:
        cursor = dbapi.cursor()
        try:
            cursor.execute(self.check, (consumer, event_id))
            return cursor.fetchone() is not None
        finally:
            cursor.close()

    def insert_on(self, dbapi: Any, consumer: str, event_id: str, stamp: Any = None) -> bool:
        cursor = dbapi.cursor()
        try:
            cursor.execute(self.insert, (consumer, event_id, stamp or self.stamp()))
            return bool(cursor.rowcount == 1)
        finally:
            cursor.close()

    # the same statements on an async connection

    async def seen_async(self, conn: AsyncConnection, consumer: str, event_id: str) -> bool:
        if not self.driver:
            result = await conn.exec_driver_sql(self.check, (consumer, event_id))
            return result.first() is not None
        driver: Any = (await conn.get_raw_connection()).driver_connection
        if self.driver == "aiosqlite":  # one trip to its thread, not four
            return bool(await driver.execute_fetchall(self.check, (consumer, event_id)))
        cursor = await driver.execute(self.check, (consumer, event_id))  # psycopg
        return await cursor.fetchone() is not None

    async def insert_async(
        self, conn: AsyncConnection, consumer: str, event_id: str, stamp: Any = None
    ) -> bool:
        params = (consumer, event_id, stamp or self.stamp())
        if self.driver:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            cursor = await driver.execute(self.insert, params)
            return bool(cursor.rowcount == 1)
        result = await conn.exec_driver_sql(self.insert, params)
        return bool(result.rowcount == 1)


async def shielded(side: Side, closing: Awaitable[Any]) -> Any:
    """Await ``closing`` (closing a session or connection of ``side``), which goes on
    to its end if the waiting task is cancelled; :meth:`Sides.close` waits for it
    before disposing of the engine: a connection given back to the pool of a disposed
    engine is never closed (psycopg then warns when the garbage collector finds it)."""
    task = asyncio.ensure_future(closing)
    side.pending.add(task)
    task.add_done_callback(side.pending.discard)
    return await asyncio.shield(task)


def raw_sqlite(driver_connection: Any) -> sqlite3.Connection:
    """The sqlite3 connection under an aiosqlite connection (the inline engine's)."""
    conn: sqlite3.Connection = driver_connection._conn
    return conn


def claim_in_session(
    side: Side, session: Any, consumer: str, event_id: str, stamp: Any = None
) -> bool:
    """Insert the mark in ``session``'s transaction (it connects, and begins); if it
    was there already, or the insert fails, close the session (rolling back). Whether
    the mark is new: the session is then the handler's. ``stamp``: its handled_at
    (default: now)."""
    try:
        dbapi = session.connection().connection.dbapi_connection
        fresh = side.insert_on(dbapi, consumer, event_id, stamp)
    except BaseException:
        session.close()
        raise
    if not fresh:
        session.close()
    return fresh


async def claim_in_session_async(
    side: Side, session: Any, consumer: str, event_id: str, stamp: Any = None
) -> bool:
    """:func:`claim_in_session` with an ``AsyncSession``."""
    try:
        conn = await session.connection()
        fresh = await side.insert_async(conn, consumer, event_id, stamp)
    except BaseException:
        await shielded(side, session.close())
        raise
    if not fresh:
        await shielded(side, session.close())
    return fresh


def open_db(db: Any) -> tuple[URL | None, Any, Any, str]:
    """``Inbox(db)``'s argument as (URL, engine, session maker, dialect name): a URL
    without engine, or an engine with or without its session maker."""
    if isinstance(db, str | URL):
        try:
            url = with_psycopg(sa.make_url(db))
        except Exception as exc:
            raise ConfigError(f"Inbox: {db!r} is not a database URL: {exc}") from exc
        _check_url(url)
        return url, None, None, url.get_backend_name()
    if isinstance(db, Engine | AsyncEngine):
        return None, db, None, db.dialect.name
    if isinstance(db, sessionmaker | async_sessionmaker):
        engine = db.kw.get("bind")
        if not isinstance(engine, Engine | AsyncEngine):
            raise ConfigError(
                "Inbox(sessionmaker) needs a session maker bound to one engine, e.g. "
                "sessionmaker(engine)"
            )
        return None, engine, db, engine.dialect.name
    raise ConfigError(
        "Inbox(db) takes a database URL, an Engine, an AsyncEngine or a "
        f"(async_)sessionmaker; got {db!r}"
    )


def _check_url(url: URL) -> None:
    if url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    ):
        raise ConfigError(
            f"Inbox({url.render_as_string()!r}): an in-memory SQLite database forgets "
            "its marks; use a file, e.g. 'sqlite:///./inbox.db'"
        )


def _side(table: sa.Table, engine: Any, maker: Any, *, owned: bool) -> Side:
    is_async = isinstance(engine, AsyncEngine)
    if maker is None:
        maker = (async_sessionmaker if is_async else sessionmaker)(engine, expire_on_commit=False)
    dialect = engine.dialect
    style = _PLACEHOLDERS.get(dialect.paramstyle)
    if style is None:
        raise ConfigError(
            f"Inbox: the driver {dialect.driver} uses the parameter style "
            f"{dialect.paramstyle!r}, which the inbox does not know; use psycopg, "
            "asyncpg, sqlite or aiosqlite"
        )
    p1, p2, p3 = (style.format(i) for i in (1, 2, 3))
    name = dialect.identifier_preparer.format_table(table)
    driver = dialect.driver if is_async and dialect.driver in ("aiosqlite", "psycopg") else ""
    return Side(
        is_async=is_async,
        maker=maker,
        engine=engine,
        owned=owned,
        check=f"SELECT 1 FROM {name} WHERE consumer = {p1} AND event_id = {p2}",
        insert=(
            f"INSERT INTO {name} (consumer, event_id, handled_at) "
            f"VALUES ({p1}, {p2}, {p3}) ON CONFLICT DO NOTHING"
        ),
        text_time=dialect.name == "sqlite",
        driver=driver,
    )


class Sides:
    """The sync and async sides of one inbox: the engine (or session maker) it was
    given, or both kinds made from its URL on first use; and its threads."""

    def __init__(self, table: sa.Table, url: URL | None, engine: Any, maker: Any) -> None:
        self.table = table
        self.url = url
        self.threads = Threads(THREADS, "tidings-inbox")
        self._sync: Side | None = None
        self._async: Side | None = None
        self._inline: Side | None = None
        if engine is not None:
            side = _side(table, engine, maker, owned=False)
            if side.is_async:
                self._async = side
            else:
                self._sync = side

    def sync(self) -> Side | None:
        """The sync side; None for an inbox given only an async engine."""
        if self._sync is None and self.url is not None:
            self._sync = self._make(of_kind(self.url, is_async=False), is_async=False)
        return self._sync

    def async_(self) -> Side | None:
        """The async side; None for an inbox given only a sync engine."""
        if self._async is None and self.url is not None:
            self._async = self._make(of_kind(self.url, is_async=True), is_async=True)
        return self._async

    def inline(self) -> Side | None:
        """For ``async def`` handlers in a lane's batch on SQLite: an async side whose
        statements run on the loop's thread (:mod:`tidings.inbox._inline`); None for an
        inbox not made from a SQLite URL."""
        if self._inline is None and self.url is not None:
            if self.url.get_backend_name() != "sqlite":
                return None
            from tidings.inbox._inline import InlineSession, inline_engine

            engine = inline_engine(self.url, SQLITE_TIMEOUT)
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            _plain_savepoints(engine.dialect, raw_sqlite)
            maker = async_sessionmaker(engine, class_=InlineSession, expire_on_commit=False)
            side = _side(self.table, engine, maker, owned=True)
            self._inline = dataclasses.replace(side, inline=True)
        return self._inline

    def marks(self) -> Side:
        """Where marks go without a session: sync (raw connections in threads, the
        fastest) when this inbox can have one."""
        side = self.sync() or self.async_()
        assert side is not None  # the constructor made at least one possible
        return side

    def _make(self, url: URL, *, is_async: bool) -> Side:
        options: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            # One writer at a time: wait for the lock rather than fail, and let every
            # partition hold a connection (overflow connections close when returned).
            options = {"connect_args": {"timeout": SQLITE_TIMEOUT}, "max_overflow": -1}
        what = "async" if is_async else "sync"
        try:
            engine: Any = make_engine(url, is_async=is_async, **options)
        except ImportError as exc:
            raise ConfigError(
                f"Inbox: the {what} driver for {url.drivername} is not installed ({exc}); "
                "install it (aiosqlite, psycopg[binary]) or pass an Engine/AsyncEngine"
            ) from exc
        if url.get_backend_name() == "sqlite":
            sa.event.listen(engine.sync_engine if is_async else engine, "connect", _sqlite_pragmas)
            _plain_savepoints(engine.dialect)
        return _side(self.table, engine, None, owned=True)

    def describe(self) -> str:
        """Where the marks are, without a password (for repr)."""
        if self.url is not None:
            return safe_url(self.url)
        side = self._sync or self._async
        return repr(side.engine) if side is not None else "?"

    async def close(self) -> None:
        """Dispose of the engines made here and stop the threads (both come back on
        demand), once what cancelled deliveries left under way has given its
        connections back: closes on the loop, then the work of the threads (closes,
        and claims whose connection is then closed)."""
        sides = [s for s in (self._async, self._inline, self._sync) if s is not None]
        pending = {task for side in sides for task in side.pending}
        if pending:
            await asyncio.wait(pending)
        await self.threads.stop()
        if self._async is not None and self._async.owned:
            await self._async.engine.dispose()
            self._async = None
        if self._inline is not None:
            await self._inline.engine.dispose()
            self._inline = None
        if self._sync is not None and self._sync.owned:
            self._sync.engine.dispose()
            self._sync = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _plain_savepoints(dialect: Any, raw: Callable[[Any], Any] | None = None) -> None:
    """SAVEPOINT, RELEASE and ROLLBACK TO of an engine made here, sent to the driver
    as they are. SQLAlchemy compiles each of them (every savepoint has a new name, so
    none is cached): with a savepoint per event in a lane's batch, that doubled the
    cost of a handler's one insert (docs/decisions/0014-inbox-lane-batches.md).
    ``raw``: the sqlite3 connection under a pool connection's driver connection (the
    inline engine: no trip through SQLAlchemy's asyncio adapter)."""

    def plain(sql: str) -> Callable[[Any, str], None]:
        def execute(connection: Any, name: str) -> None:
            pooled = connection.connection
            target = raw(pooled.driver_connection) if raw else pooled.dbapi_connection
            cursor = target.cursor()
            try:
                cursor.execute(sql.format(name))
            finally:
                cursor.close()

        return execute

    dialect.do_savepoint = plain("SAVEPOINT {}")
    dialect.do_release_savepoint = plain("RELEASE SAVEPOINT {}")
    dialect.do_rollback_to_savepoint = plain("ROLLBACK TO SAVEPOINT {}")


def use_wal_first(engine: Any) -> None:
    """Put an inbox's own SQLite file in WAL mode before its engine connects: the
    switch each connection makes (``_sqlite_pragmas``) fails at once, without waiting,
    while another process writes to a new file (tidings/_sqlite.py); this one waits."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    conn = sqlite3.connect(url.database, timeout=SQLITE_TIMEOUT)
    try:
        use_wal(conn, SQLITE_TIMEOUT)
    finally:
        conn.close()
