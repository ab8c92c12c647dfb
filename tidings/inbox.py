"""The inbox: a group's record of the events it has handled, so that a redelivered
event has no second effect (an idempotent consumer).

::

    from tidings import Inbox

    inbox = Inbox("postgresql+psycopg://app@db/app")  # or "sqlite:///./app.db", an
    #   Engine, an AsyncEngine, a sessionmaker or an async_sessionmaker

    @app.subscriber("task-events", group="email", inbox=inbox)
    async def remember(payload, ctx):
        ctx.session.add(Sent(task_id=payload["task_id"]))  # commits with the mark

Delivery is at least once: an event whose offset was not committed before a crash, a
rebalance or a reset of the group's offsets is delivered again, and so is an event
published twice or a dead letter replayed twice. With an inbox, each handler of the
group records the event's id when it has handled it, and an event whose id is already
recorded is passed without calling the handler (counted in ``Stats.duplicates``).

**Handlers that write to a database** take a context and use ``ctx.session``, a
SQLAlchemy session on the inbox's database. The inbox commits its transaction after
the handler returns, and the mark is in it: the handler's writes and the mark commit
together or not at all. Do not commit in the handler; tidings does. If the handler
raises, the transaction is rolled back (no effect, no mark) and the exception goes on
to ``Retry``. The session follows the handler's kind: a ``Session`` for a plain ``def``
handler (run in a worker thread, the session with it), an ``AsyncSession`` for an
``async def`` handler. An Inbox made from a URL has both kinds; one made from an Engine
(or sessionmaker) has only ``Session``, one from an AsyncEngine (or
async_sessionmaker) only ``AsyncSession``. A handler of the other kind still has its
events deduplicated, but its ``ctx.session`` is a placeholder that raises ConfigError
when used: a blocking session on the event loop could stall every partition on one
row lock.

**Handlers without a database** (mail, webhooks) use the same Inbox as a durable store
of ids, for instance ``Inbox("sqlite:///./email-inbox.db")``. Their effect cannot be in
the inbox's transaction, so the mark is committed right after the handler returns: a
crash between the effect and that commit repeats the effect once. Within one process
two deliveries of the same event never run at once (the second waits and then finds
the mark).

**How a mark is taken.** On PostgreSQL the mark is inserted first, in the handler's
transaction (``INSERT ... ON CONFLICT DO NOTHING``: check and claim in one round
trip), and the connection is held while the handler runs: a concurrent delivery of the
same event, in any process, waits on that row and then finds it, without calling its
handler. On SQLite, which has one writer for the whole file, holding the write lock
while the handler runs would serialize every handler, so the mark is looked up first
(a read; in WAL mode on the event loop's thread, as readers never wait) and inserted
once the handler has returned: in the session's transaction, just before its commit,
if the handler used the session (which connects only then), else on its own, the
marks of deliveries finishing together in one transaction (one fsync). If another
delivery of the same event committed its mark in between, the insert finds it, and
this delivery's transaction, effect included, is rolled back and counted as a
duplicate (an effect outside the database has happened twice then). SQLite files
opened from a URL use WAL and ``synchronous=FULL``. SQLite has one writer: handlers
that write through their sessions wait for each other's commits, and an
``AsyncSession`` on SQLite goes through aiosqlite's thread; for many such events per
second, use plain ``def`` handlers or PostgreSQL (``bench/fig_inbox.py`` measures it).

**What a mark is.** A row ``(consumer, event_id, handled_at)`` in ``table`` (default
``tidings_inbox``), primary key ``(consumer, event_id)``, ``handled_at`` in UTC.
``consumer`` is ``"<group>:<module>.<qualname>"`` of the handler (see
:meth:`Inbox.key`): every handler of a group handles an event once, and renaming or
moving a handler starts a fresh record for it. The table is created on first use;
:meth:`Inbox.create_table` creates it ahead, and :attr:`Inbox.table` (in
:attr:`Inbox.metadata`, or in your own ``metadata=``) is there for Alembic.

**Retention.** Marks older than ``retention`` (default 7 days; None keeps them) are
deleted in the background, in batches, at most every ``retention / 100`` and at least
every 5 minutes while events flow. An event redelivered after its mark was deleted
is handled again: keep ``retention`` longer than any replay you may run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from tidings._sqlite import use_wal
from tidings.errors import ConfigError

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
    from sqlalchemy.orm import Session, sessionmaker

    from tidings.middleware.base import Delivery, Next
    from tidings.subscriber import Subscriber

__all__ = ["DEFAULT_RETENTION", "DEFAULT_TABLE", "Inbox"]

log = logging.getLogger("tidings.inbox")

T = TypeVar("T")

DEFAULT_TABLE = "tidings_inbox"
DEFAULT_RETENTION = timedelta(days=7)
SWEEP_BATCH = 5000  # marks deleted per transaction: short write locks on SQLite
SWEEP_MAX_INTERVAL = 300.0  # seconds
SWEEP_MIN_INTERVAL = 1.0
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


class _NoSession:
    """``ctx.session`` of a handler this inbox has no session of its kind for."""

    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(self._why)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<no session: {self._why}>"


@dataclass(frozen=True, slots=True)
class _Side:
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

    def stamp(self) -> Any:
        now = datetime.now(UTC)
        return now.strftime(_SQLITE_TIME) if self.text_time else now


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one subscriber's deliveries go through the inbox (worked out once)."""

    consumer: str
    session: _Side | None  # where the handler's session comes from; None: no session
    marks: _Side  # where marks go when there is no session (sync if possible)
    placeholder: _NoSession | None  # ctx.session when there is no session


def _handler_name(handler: Callable[..., Any]) -> str:
    target: Any = handler
    if not hasattr(handler, "__qualname__"):  # a callable object: name its class
        target = type(handler)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{target.__qualname__}"


def _close_quietly(closeable: Any) -> None:
    try:
        closeable.close()
    except Exception:
        log.warning("inbox: closing a session or connection failed", exc_info=True)


def _then_close(future: Future[Any]) -> None:
    """After a cancelled wait: close what the thread's step returned, once it is done."""
    if not future.cancelled() and future.exception() is None and future.result() is not None:
        _close_quietly(future.result())


def _seen_on(dbapi: Any, side: _Side, consumer: str, event_id: str) -> bool:
    cursor = dbapi.cursor()
    try:
        cursor.execute(side.check, (consumer, event_id))
        return cursor.fetchone() is not None
    finally:
        cursor.close()


def _insert_on(dbapi: Any, side: _Side, consumer: str, event_id: str) -> bool:
    cursor = dbapi.cursor()
    try:
        cursor.execute(side.insert, (consumer, event_id, side.stamp()))
        return bool(cursor.rowcount == 1)
    finally:
        cursor.close()


class Inbox:
    """The handled event ids of the groups that use it, in a SQL table (see the module
    documentation above for what it guarantees).

    ``db``: a SQLAlchemy URL (``"sqlite:///./app.db"``, ``"postgresql+psycopg://..."``),
    an ``Engine``, an ``AsyncEngine``, a ``sessionmaker`` or an ``async_sessionmaker``
    (SQLite or PostgreSQL). Engines and session makers you pass stay yours: size their
    pools for the partitions handled at once (on PostgreSQL each holds a connection
    while its handler runs). ``table``, ``schema`` and ``metadata``: where the marks
    live. ``retention``: how long marks are kept (a timedelta, or None).
    """

    def __init__(
        self,
        db: str | URL | Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any],
        *,
        table: str = DEFAULT_TABLE,
        retention: timedelta | None = DEFAULT_RETENTION,
        schema: str | None = None,
        metadata: sa.MetaData | None = None,
    ) -> None:
        import sqlalchemy as sa
        from sqlalchemy.engine import URL, Engine
        from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
        from sqlalchemy.orm import sessionmaker

        if not isinstance(table, str) or not table:
            raise ConfigError(f"Inbox(table=...) must be a table name, got {table!r}")
        if retention is not None and (
            not isinstance(retention, timedelta) or retention <= timedelta(0)
        ):
            raise ConfigError(
                f"Inbox(retention=...) must be a positive timedelta (or None to keep every "
                f"mark), e.g. timedelta(days=7); got {retention!r}"
            )
        self.retention = retention
        self._url: URL | None = None
        engine: Any = None
        maker: Any = None
        if isinstance(db, str | URL):
            try:
                self._url = sa.make_url(db)
            except Exception as exc:
                raise ConfigError(f"Inbox: {db!r} is not a database URL: {exc}") from exc
            self._check_url(self._url)
            dialect = self._url.get_backend_name()
        elif isinstance(db, Engine | AsyncEngine):
            engine = db
            dialect = db.dialect.name
        elif isinstance(db, sessionmaker | async_sessionmaker):
            engine, maker = db.kw.get("bind"), db
            if not isinstance(engine, Engine | AsyncEngine):
                raise ConfigError(
                    "Inbox(sessionmaker) needs a session maker bound to one engine, e.g. "
                    "sessionmaker(engine)"
                )
            dialect = engine.dialect.name
        else:
            raise ConfigError(
                "Inbox(db) takes a database URL, an Engine, an AsyncEngine or a "
                f"(async_)sessionmaker; got {db!r}"
            )
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"Inbox supports SQLite and PostgreSQL, not {dialect!r}")
        self.dialect = dialect
        # PostgreSQL: claim first (row lock: concurrent duplicates wait); SQLite: check
        # first, mark last (the file's one write lock is not held by the handler).
        self._claim_first = dialect == "postgresql"
        self.metadata = sa.MetaData() if metadata is None else metadata
        self.table = self._define(self.metadata, table, schema)
        t = self.table
        oldest = (
            sa.select(t.c.consumer, t.c.event_id)
            .where(t.c.handled_at < sa.bindparam("cutoff"))
            .limit(SWEEP_BATCH)
        )
        self._sweep = sa.delete(t).where(sa.tuple_(t.c.consumer, t.c.event_id).in_(oldest))

        self._sync: _Side | None = None
        self._async: _Side | None = None
        if engine is not None:
            side = self._side(engine, maker, owned=False)
            if side.is_async:
                self._async = side
            else:
                self._sync = side

        self._ready = False
        self._preparing: asyncio.Future[None] | None = None
        self._plans: dict[tuple[str, Callable[..., Any]], _Plan] = {}
        self._owners: dict[str, Callable[..., Any]] = {}
        self._busy: dict[tuple[str, str], asyncio.Event] = {}
        self._threads: ThreadPoolExecutor | None = None
        if retention is None:
            self._sweep_every: float | None = None
        else:
            every = retention.total_seconds() / 100
            self._sweep_every = max(SWEEP_MIN_INTERVAL, min(SWEEP_MAX_INTERVAL, every))
        self._next_sweep = 0.0  # the first handled event starts one
        self._sweeping: asyncio.Task[None] | None = None
        self._closing = False
        self._reader: Any = None  # SQLite: lookups on the loop (False: not WAL)
        self._pending: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._writing: asyncio.Task[None] | None = None

    # -- setup -------------------------------------------------------------------

    @staticmethod
    def _check_url(url: URL) -> None:
        if url.get_backend_name() == "sqlite" and (
            url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        ):
            raise ConfigError(
                f"Inbox({url.render_as_string()!r}): an in-memory SQLite database forgets "
                "its marks; use a file, e.g. 'sqlite:///./inbox.db'"
            )

    @staticmethod
    def _define(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
        import sqlalchemy as sa

        key = f"{schema}.{name}" if schema else name
        existing = metadata.tables.get(key)
        if existing is not None:
            if {c.name for c in existing.columns} != {"consumer", "event_id", "handled_at"}:
                raise ConfigError(
                    f"the metadata already has a table {key!r} that is not an inbox; "
                    "choose another Inbox(table=...)"
                )
            return existing
        return sa.Table(
            name,
            metadata,
            # "<group>:<module>.<qualname>" of the handler: see Inbox.key
            sa.Column("consumer", sa.String(), primary_key=True),
            sa.Column("event_id", sa.String(), primary_key=True),
            sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
            sa.Index(f"ix_{name}_handled_at", "handled_at"),
            schema=schema,
        )

    def _side(self, engine: Any, maker: Any, *, owned: bool) -> _Side:
        from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
        from sqlalchemy.orm import sessionmaker

        is_async = isinstance(engine, AsyncEngine)
        if maker is None:
            maker = (async_sessionmaker if is_async else sessionmaker)(
                engine, expire_on_commit=False
            )
        dialect = engine.dialect
        style = _PLACEHOLDERS.get(dialect.paramstyle)
        if style is None:
            raise ConfigError(
                f"Inbox: the driver {dialect.driver} uses the parameter style "
                f"{dialect.paramstyle!r}, which the inbox does not know; use psycopg, "
                "asyncpg, sqlite or aiosqlite"
            )
        p1, p2, p3 = (style.format(i) for i in (1, 2, 3))
        table = dialect.identifier_preparer.format_table(self.table)
        driver = dialect.driver if is_async and dialect.driver in ("aiosqlite", "psycopg") else ""
        return _Side(
            is_async=is_async,
            maker=maker,
            engine=engine,
            owned=owned,
            check=f"SELECT 1 FROM {table} WHERE consumer = {p1} AND event_id = {p2}",
            insert=(
                f"INSERT INTO {table} (consumer, event_id, handled_at) "
                f"VALUES ({p1}, {p2}, {p3}) ON CONFLICT DO NOTHING"
            ),
            text_time=dialect.name == "sqlite",
            driver=driver,
        )

    def _sync_side(self) -> _Side | None:
        if self._sync is None and self._url is not None:
            url = self._url
            if url.get_driver_name() == "aiosqlite":
                url = url.set(drivername="sqlite")
            elif url.get_driver_name() in ("asyncpg", "psycopg_async"):
                url = url.set(drivername="postgresql+psycopg")
            self._sync = self._make_side(url, is_async=False)
        return self._sync

    def _async_side(self) -> _Side | None:
        if self._async is None and self._url is not None:
            url = self._url
            if url.get_driver_name() == "pysqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            elif url.get_driver_name() in ("psycopg", "psycopg2"):
                url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is both
            self._async = self._make_side(url, is_async=True)
        return self._async

    def _make_side(self, url: URL, *, is_async: bool) -> _Side:
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        options: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            # One writer at a time: wait for the lock rather than fail, and let every
            # partition hold a connection (overflow connections close when returned).
            options = {"connect_args": {"timeout": SQLITE_TIMEOUT}, "max_overflow": -1}
        what = "async" if is_async else "sync"
        try:
            engine: Any = (create_async_engine if is_async else sa.create_engine)(url, **options)
        except ImportError as exc:
            raise ConfigError(
                f"Inbox: the {what} driver for {url.drivername} is not installed ({exc}); "
                "install it (aiosqlite, psycopg[binary]) or pass an Engine/AsyncEngine"
            ) from exc
        if url.get_backend_name() == "sqlite":
            sa.event.listen(engine.sync_engine if is_async else engine, "connect", _sqlite_pragmas)
        return self._side(engine, None, owned=True)

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(THREADS, "tidings-inbox")
        return self._threads

    async def _thread(self, fn: Callable[..., T], *args: Any, undo: bool = False) -> T:
        """``fn(*args)`` in this inbox's threads. ``undo``: if the wait is cancelled,
        close what ``fn`` returns (a session or connection) once it has returned."""
        future = self._pool().submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if undo:
                future.add_done_callback(_then_close)
            raise

    def create_table(self) -> None:
        """Create the marks table (and its index) if missing, with a sync engine."""
        side = self._sync_side()
        if side is None:
            raise ConfigError(
                "this Inbox has only an async engine: use 'await inbox.create_table_async()'"
            )
        _create(side.engine, self.table, side.owned)
        self._ready = True

    async def create_table_async(self) -> None:
        """:meth:`create_table`, awaited (with either kind of engine)."""
        await self._prepare(self._marks_side())

    async def _prepare(self, side: _Side) -> None:
        # Deliveries arriving together before the table is known wait for one creator.
        task = self._preparing
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._preparing = asyncio.ensure_future(self._create_table(side))
        await asyncio.shield(task)
        self._ready = True

    async def _create_table(self, side: _Side) -> None:
        if not side.is_async:
            await self._thread(_create, side.engine, self.table, side.owned)
            return
        if side.owned:
            await self._thread(_use_wal_first, side.engine)
        for attempt in (1, 2):
            try:
                async with side.engine.begin() as conn:
                    await conn.run_sync(_create_on, self.table)
                return
            except Exception:
                if attempt == 2:  # see _create
                    raise

    def _marks_side(self) -> _Side:
        """Where marks go without a session: sync (raw connections in threads, the
        fastest) when this inbox can have one."""
        side = self._sync_side() or self._async_side()
        assert side is not None  # the constructor made at least one possible
        return side

    # -- the public helpers -------------------------------------------------------

    def key(self, subscriber: Subscriber) -> str:
        """The ``consumer`` of ``subscriber``'s marks: ``"<group>:<module>.<qualname>"``."""
        return f"{subscriber.group}:{_handler_name(subscriber.handler)}"

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete the marks older than the retention window now (or at ``now``); return
        how many. The middleware calls this in the background; call it to purge ahead."""
        if self.retention is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - self.retention
        side = self._marks_side()
        if not self._ready:
            await self._prepare(side)
        if not side.is_async:
            return await self._thread(self._sweep_sync, side, cutoff)
        deleted = 0
        while True:
            async with side.engine.begin() as conn:
                result = await conn.execute(self._sweep, {"cutoff": cutoff})
            count: int = result.rowcount
            deleted += count
            if count < SWEEP_BATCH or self._closing:
                return deleted

    def _sweep_sync(self, side: _Side, cutoff: datetime) -> int:
        deleted = 0
        while True:
            with side.engine.begin() as conn:
                count: int = conn.execute(self._sweep, {"cutoff": cutoff}).rowcount
            deleted += count
            if count < SWEEP_BATCH or self._closing:
                return deleted

    async def close(self) -> None:
        """Wait for a running sweep and dispose of the engines this inbox made (from a
        URL); engines and session makers you passed are left alone (close the inbox
        before you dispose of them). It can be used again afterwards (new engines are
        made on demand)."""
        if self._sweeping is not None:
            # Not cancelled: its thread would go on with a connection. It stops after
            # the batch it is deleting.
            self._closing = True
            try:
                with contextlib.suppress(Exception):
                    await self._sweeping
            finally:
                self._closing = False
            self._sweeping = None
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
            self._writing = None
        if self._reader:
            _close_quietly(self._reader)
        self._reader = None
        if self._async is not None and self._async.owned:
            await self._async.engine.dispose()
            self._async = None
        if self._sync is not None and self._sync.owned:
            self._sync.engine.dispose()
            self._sync = None
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
        self._plans.clear()

    async def __aenter__(self) -> Inbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        if self._url is not None:
            where = self._url.render_as_string(hide_password=True)
        else:
            side = self._sync or self._async
            where = repr(side.engine) if side is not None else "?"
        return f"Inbox({where}, table={self.table.fullname!r}, retention={self.retention})"

    # -- the middleware's part ---------------------------------------------------

    def claim(self, subscriber: Subscriber) -> str:
        """Reserve ``subscriber``'s key (``@app.subscriber`` calls this, so that two
        handlers sharing one are refused at start-up, not at their first event)."""
        consumer = self.key(subscriber)
        owner = self._owners.setdefault(consumer, subscriber.handler)
        if owner is not subscriber.handler:
            raise ConfigError(
                f"two handlers of group {subscriber.group!r} share the inbox key "
                f"{consumer!r} ({owner!r} and {subscriber.handler!r}): they would skip each "
                "other's events; give them different names"
            )
        return consumer

    def _plan(self, subscriber: Subscriber) -> _Plan:
        consumer = self.claim(subscriber)
        session: _Side | None = None
        placeholder: _NoSession | None = None
        if subscriber.takes_context:  # without a context, a handler has no session
            session = self._async_side() if subscriber.is_async else self._sync_side()
            if session is None:
                kind = "an async def" if subscriber.is_async else "a plain def"
                has = "a sync Engine" if subscriber.is_async else "an AsyncEngine"
                placeholder = _NoSession(
                    f"ctx.session: {subscriber.name} is {kind} handler and its Inbox has "
                    f"only {has}; make the Inbox from a URL (it then has both kinds), or "
                    "from an engine of the handler's kind"
                )
                log.warning(
                    "inbox: %s gets no ctx.session (%s handler, inbox with %s); its events "
                    "are still deduplicated",
                    subscriber.name, kind, has,
                )  # fmt: skip
        plan = _Plan(consumer, session, self._marks_side(), placeholder)
        self._plans[(subscriber.group, subscriber.handler)] = plan
        return plan

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        """Run ``call_next`` (the handler) unless this subscriber already handled the
        event; commit its session's transaction with the mark. Called by
        :class:`~tidings.middleware.InboxMiddleware`."""
        sub = delivery.subscriber
        plan = self._plans.get((sub.group, sub.handler)) or self._plan(sub)
        if not self._ready:
            await self._prepare(plan.marks)
        slot = (plan.consumer, delivery.event.id)
        gate = self._busy.get(slot)
        while gate is not None:  # the same event is being handled here: wait for it
            await gate.wait()
            gate = self._busy.get(slot)
        gate = self._busy[slot] = asyncio.Event()
        try:
            if self._claim_first:
                fresh = await self._claim_first_then_handle(plan, delivery, call_next)
            else:
                fresh = await self._check_then_handle(plan, delivery, call_next)
        finally:
            del self._busy[slot]
            gate.set()
        if not fresh:
            delivery.stats.duplicates += 1
            log.debug(
                "group %s: %s already handled %s %s; skipped",
                delivery.group, sub.name, delivery.event.type, delivery.event.id,
            )  # fmt: skip
        if self._sweep_every is not None and time.monotonic() >= self._next_sweep:
            self._start_sweep()

    async def _run_handler(
        self,
        delivery: Delivery,
        call_next: Next,
        shown: Any,
        holder: Any = None,
        side: _Side | None = None,
    ) -> None:
        """Call the handler with ``ctx.session`` = ``shown``; if it fails, roll back
        and close ``holder`` (a session or raw connection of ``side``)."""
        delivery.session = shown
        try:
            await call_next(delivery)
        except BaseException as exc:
            if side is not None:
                await self._discard(side, holder, cancelled=isinstance(exc, asyncio.CancelledError))
            raise
        finally:
            delivery.session = None

    async def _discard(self, side: _Side, holder: Any, *, cancelled: bool) -> None:
        """Roll back and close ``holder``: no effect, no mark."""
        if side.is_async:
            await asyncio.shield(holder.close())
        elif getattr(holder, "in_transaction", None) is not None and not holder.in_transaction():
            holder.close()  # a session that never connected: no I/O
        else:
            closing = self._pool().submit(_close_quietly, holder)
            if not cancelled:  # a cancelled task must not wait: the thread closes it
                await asyncio.wrap_future(closing)

    # SQLite: look the mark up, handle, insert the mark just before the commit.

    async def _check_then_handle(self, plan: _Plan, delivery: Delivery, call_next: Next) -> bool:
        consumer, event_id, marks = plan.consumer, delivery.event.id, plan.marks
        if await self._seen(marks, consumer, event_id):
            return False
        if plan.session is None:
            await self._run_handler(delivery, call_next, plan.placeholder)
            return await self._mark(marks, consumer, event_id)
        side = plan.session
        session = side.maker()  # it connects when the handler first uses it
        await self._run_handler(delivery, call_next, session, session, side)
        if not session.in_transaction():  # unused (or committed by the handler)
            await self._discard(side, session, cancelled=False)  # no connection: no I/O
            return await self._mark(marks, consumer, event_id)
        if not side.is_async:
            return await self._thread(self._mark_and_commit_sync, side, session, consumer, event_id)
        try:
            conn = await session.connection()
            if not await self._insert_async(side, conn, consumer, event_id):
                return False  # marked meanwhile by another delivery: roll back
            await session.commit()
            return True
        finally:
            await asyncio.shield(session.close())

    async def _seen(self, side: _Side, consumer: str, event_id: str) -> bool:
        """Whether the mark is there (SQLite). In WAL mode a reader never waits for a
        writer: the lookup runs on the loop's thread, which costs less than a trip to
        another thread (see docs/decisions/0002-fetch-on-the-event-loop.md)."""
        if side.is_async:
            async with side.engine.connect() as conn:
                return await self._seen_async(side, conn, consumer, event_id)
        reader = self._reader if self._reader is not None else self._open_reader(side)
        if reader is False:
            return await self._thread(self._seen_sync, side, consumer, event_id)
        # fetchall: the statement runs to its end, so no read snapshot stays open.
        return bool(reader.execute(side.check, (consumer, event_id)).fetchall())

    def _open_reader(self, side: _Side) -> Any:
        """A connection of this inbox's own for lookups on the loop, if the file is in
        WAL mode (else False: lookups go to threads, as they may wait for a writer)."""
        raw = side.engine.raw_connection()
        try:
            (mode,) = raw.cursor().execute("PRAGMA journal_mode").fetchone()
        except BaseException:
            raw.close()
            raise
        if str(mode).lower() != "wal":
            raw.close()
            self._reader = False
            return False
        raw.detach()  # not the pool's any more: closed by Inbox.close()
        self._reader = raw.dbapi_connection
        return self._reader

    async def _mark(self, side: _Side, consumer: str, event_id: str) -> bool:
        """Insert and commit a mark on its own; False if it was there. With a sync
        engine, marks of deliveries finishing together share one transaction (one
        fsync): one write is in flight, and what arrives meanwhile goes in the next."""
        if side.is_async:
            async with side.engine.begin() as conn:
                return await self._insert_async(side, conn, consumer, event_id)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((consumer, event_id, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_pending(side))
        # Shielded: a cancelled delivery leaves its mark to the batch (the handler did
        # return: marking it is right).
        return await asyncio.shield(done)

    async def _write_pending(self, side: _Side) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                fresh = await self._thread(
                    self._write_marks, side, [(c, e) for c, e, _ in batch], side.stamp()
                )
            except BaseException as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                        done.exception()  # seen: a cancelled delivery may never await it
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (*_, done), was_fresh in zip(batch, fresh, strict=True):
                if not done.done():
                    done.set_result(was_fresh)

    def _write_marks(self, side: _Side, marks: list[tuple[str, str]], stamp: Any) -> list[bool]:
        raw = side.engine.raw_connection()
        try:
            cursor = raw.cursor()
            fresh = []
            for consumer, event_id in marks:
                cursor.execute(side.insert, (consumer, event_id, stamp))
                fresh.append(cursor.rowcount == 1)
            cursor.close()
            raw.commit()
            return fresh
        finally:
            raw.close()  # rolls back if the commit did not happen

    def _seen_sync(self, side: _Side, consumer: str, event_id: str) -> bool:
        raw = side.engine.raw_connection()
        try:
            return _seen_on(raw, side, consumer, event_id)
        finally:
            raw.close()

    def _mark_and_commit_sync(
        self, side: _Side, session: Session, consumer: str, event_id: str
    ) -> bool:
        try:
            dbapi = session.connection().connection.dbapi_connection
            if not _insert_on(dbapi, side, consumer, event_id):
                return False  # marked meanwhile by another delivery: roll back
            session.commit()
            return True
        finally:
            session.close()

    # PostgreSQL: insert the mark first, in the transaction the handler works in.

    async def _claim_first_then_handle(
        self, plan: _Plan, delivery: Delivery, call_next: Next
    ) -> bool:
        consumer, event_id = plan.consumer, delivery.event.id
        side = plan.session or plan.marks
        if side.is_async:
            return await self._claim_async(plan, side, delivery, call_next)
        # A Session for the handler, or a raw connection for the mark alone.
        claim = self._claim_in_session_sync if plan.session else self._claim_raw_sync
        holder = await self._thread(claim, side, consumer, event_id, undo=True)
        if holder is None:
            return False
        shown = holder if plan.session else plan.placeholder
        await self._run_handler(delivery, call_next, shown, holder, side)
        await self._thread(_commit_and_close, holder)
        return True

    def _claim_in_session_sync(self, side: _Side, consumer: str, event_id: str) -> Any:
        session = side.maker()
        try:
            dbapi = session.connection().connection.dbapi_connection
            fresh = _insert_on(dbapi, side, consumer, event_id)
        except BaseException:
            session.close()
            raise
        if not fresh:
            session.close()
            return None
        return session

    def _claim_raw_sync(self, side: _Side, consumer: str, event_id: str) -> Any:
        raw = side.engine.raw_connection()
        try:
            fresh = _insert_on(raw, side, consumer, event_id)
        except BaseException:
            raw.close()
            raise
        if not fresh:
            raw.close()  # rolls back
            return None
        return raw

    async def _claim_async(
        self, plan: _Plan, side: _Side, delivery: Delivery, call_next: Next
    ) -> bool:
        consumer, event_id = plan.consumer, delivery.event.id
        if plan.session is None:  # the mark alone, on a connection
            async with side.engine.connect() as conn:  # closing rolls back the rest
                await conn.begin()
                if not await self._insert_async(side, conn, consumer, event_id):
                    return False
                await self._run_handler(delivery, call_next, plan.placeholder)
                await conn.commit()
                return True
        session = side.maker()
        try:
            conn = await session.connection()
            if not await self._insert_async(side, conn, consumer, event_id):
                return False
            await self._run_handler(delivery, call_next, session)  # failed: closed below
            await session.commit()
            return True
        finally:
            await asyncio.shield(session.close())  # rolls back what was not committed

    # the mark statements on an async connection

    async def _seen_async(
        self, side: _Side, conn: AsyncConnection, consumer: str, event_id: str
    ) -> bool:
        if not side.driver:
            result = await conn.exec_driver_sql(side.check, (consumer, event_id))
            return result.first() is not None
        driver: Any = (await conn.get_raw_connection()).driver_connection
        if side.driver == "aiosqlite":  # one trip to its thread, not four
            return bool(await driver.execute_fetchall(side.check, (consumer, event_id)))
        cursor = await driver.execute(side.check, (consumer, event_id))  # psycopg
        return await cursor.fetchone() is not None

    async def _insert_async(
        self, side: _Side, conn: AsyncConnection, consumer: str, event_id: str
    ) -> bool:
        params = (consumer, event_id, side.stamp())
        if side.driver:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            cursor = await driver.execute(side.insert, params)
            return bool(cursor.rowcount == 1)
        result = await conn.exec_driver_sql(side.insert, params)
        return bool(result.rowcount == 1)

    # -- retention -----------------------------------------------------------------

    def _start_sweep(self) -> None:
        assert self._sweep_every is not None
        self._next_sweep = time.monotonic() + self._sweep_every
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep_quietly())

    async def _sweep_quietly(self) -> None:
        try:
            deleted = await self.sweep()
        except Exception:
            log.warning("inbox: deleting old marks from %s failed", self.table, exc_info=True)
            return
        if deleted:
            log.debug("inbox: deleted %d marks older than %s", deleted, self.retention)


def _commit_and_close(holder: Any) -> None:
    """Commit a Session or raw connection and close it (if the commit fails, closing
    rolls back)."""
    try:
        holder.commit()
    finally:
        holder.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _create_on(conn: Any, table: sa.Table) -> None:
    from sqlalchemy.schema import CreateIndex, CreateTable

    conn.execute(CreateTable(table, if_not_exists=True))
    for index in table.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))


def _use_wal_first(engine: Any) -> None:
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


def _create(engine: Engine, table: sa.Table, owned: bool) -> None:
    if owned:
        _use_wal_first(engine)
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                _create_on(conn, table)
            return
        except Exception:
            # Two processes creating it at once: PostgreSQL may refuse the second
            # CREATE ... IF NOT EXISTS; the table is there the second time.
            if attempt == 2:
                raise
