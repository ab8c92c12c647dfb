"""The transactional outbox: events written in the caller's own database transaction,
then moved to the log by a relay.

Publishing straight to the log from a request handler has two failure modes: the
database commits and the publish fails (the fact happened, nobody hears of it), or
the publish succeeds and the transaction rolls back (everyone hears of something that
did not happen). The outbox closes both: :meth:`Outbox.add` inserts the encoded event
into a table of the service's own database, in the caller's transaction, so the event
exists exactly when the change it reports does. A relay (:meth:`Outbox.relay`, run by
``tidings run`` beside the worker or alone by ``tidings outbox relay``) then appends
committed rows to the log and deletes them::

    outbox = Outbox(app, "postgresql+psycopg://...", topic="task-events")

    with Session(engine) as session, session.begin():
        session.add(task)
        outbox.add(session, TaskCreated(task_id=task.id))

    app.add_component(outbox.relay())

What the relay guarantees (the reasoning is in ``docs/decisions/0004-outbox.md``):

- **At least once.** A row is deleted only after the log acknowledged its append; a
  crash in between publishes it again, with the same event id (the dedupe key of an
  inbox).
- **Commit order per key.** Each pass publishes the rows visible to it, oldest ``seq``
  first. On SQLite writers are serialised, so ``seq`` order is commit order. On
  PostgreSQL a ``seq`` is drawn at insert, not at commit, so a lower ``seq`` may
  commit after a higher one was published; since rows are deleted rather than passed
  by a cursor, it is still published, in the next pass: the order is then the order
  in which the transactions committed. ``add()`` inserts at once, after the
  session's pending writes are flushed, so two transactions that the database
  serialises on a row lock (two updates of one task) draw their ``seq`` in lock
  order, and their events keep it.
- **Delayed events** (``deliver_at``) are published once due, by due time; they do
  not hold back other rows. In a catch-up (the relay was down), a pass interleaves
  due delayed rows with immediate ones by time.
- **One active relay per table**, by a lease row renewed every third of its length.
  Every renewal changes the row (a counter). Another relay waits and takes over when
  the row is released (its holder stopped), or when it has seen the row unchanged for
  a lease length of its own monotonic clock (its holder died or cannot reach the
  database). A holder whose renewals have failed for two thirds of its lease, counted
  from when it sent the last one that succeeded, stops relaying. No wall clock takes
  part: a clock step neither ends a live relay's lease nor prolongs a dead one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from tidings.codec import encode
from tidings.envelope import Event
from tidings.errors import ConfigError, TidingsError
from tidings.transport import SYSTEM_CLOCK, Clock, check_topic_name, new_member_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    from tidings.app import Tidings

__all__ = ["Outbox", "OutboxError", "OutboxRelay", "OutboxStatus", "UTCDateTime"]

log = logging.getLogger("tidings.outbox")

T = TypeVar("T")

DEFAULT_TABLE = "tidings_outbox"
MAX_BATCH = 10_000  # bound parameters of one DELETE stay far below every driver's limit
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


class OutboxError(TidingsError):
    """The outbox's database failed or refused (it is not the log's transport)."""


# -- the tables ---------------------------------------------------------------------


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A column type for aware UTC datetimes on every database (the outbox's own
    columns use it; so may the tables written beside it).

    PostgreSQL stores ``timestamptz``. SQLite has no time type: SQLAlchemy writes a
    fixed-width text and drops the zone, so values are converted to UTC first; the
    fixed width makes the text compare in time order, which the relay's
    ``deliver_at <= now`` relies on.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ConfigError(f"{value.isoformat()} has no time zone: pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _tables(metadata: sa.MetaData, name: str, lease_name: str) -> tuple[sa.Table, sa.Table]:
    outbox = sa.Table(
        name,
        metadata,
        # A BIGINT primary key is not SQLite's rowid alias; INTEGER is. AUTOINCREMENT:
        # a seq is never reused after its row was deleted, so a late DELETE of a
        # stale relay can never hit a newer row.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("key", sa.Text, nullable=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("deliver_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("event_id", name=f"{name}_event_id_key"),
        # (deliver_at, seq): "deliver_at IS NULL ORDER BY seq" and
        # "deliver_at <= now ORDER BY deliver_at, seq" both read it in order.
        sa.Index(f"{name}_due", "deliver_at", "seq"),
        sqlite_autoincrement=True,
    )
    lease = sa.Table(
        lease_name,
        metadata,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=True),
        # The holder's own idea of when its lease ends, in seconds since the epoch by
        # the database's clock on PostgreSQL, by this host's on SQLite. Shown by
        # `tidings outbox status` and honoured by relays of tidings before the renewal
        # counter; a relay never judges expiry by it (a wall clock can step).
        sa.Column("expires_at", sa.Double, nullable=False),
        *_lease_columns(),
    )
    return outbox, lease


def _lease_columns() -> list[sa.Column[Any]]:
    """The lease columns added after the first release (:meth:`Outbox._create` adds
    them to a lease table that lacks them)."""
    return [
        # Changed by every renewal, take-over and release: a standby that has seen it
        # unchanged for a lease length of its own monotonic time may take the lease.
        sa.Column("renewals", sa.BigInteger, nullable=False, server_default="0"),
        # The holder's lease length in seconds: a standby with a shorter one waits this.
        sa.Column("lease_s", sa.Double, nullable=True),
    ]


# -- engines --------------------------------------------------------------------------


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


def _is_async(obj: object) -> bool:
    kinds = _asyncio_types()
    return bool(kinds) and isinstance(obj, kinds)


def _engine_for(db: str | Engine | AsyncEngine) -> tuple[Engine | AsyncEngine, bool]:
    """The engine for ``db`` and whether this outbox made it (and so disposes it)."""
    if isinstance(db, Engine):
        return db, False
    if _is_async(db):
        return cast("AsyncEngine", db), False
    if not isinstance(db, str):
        raise ConfigError(
            f"Outbox(db=...) takes a database URL or a SQLAlchemy engine, got {type(db).__name__}"
        )
    url_text = db
    for plain in ("postgres://", "postgresql://"):
        if url_text.startswith(plain):  # SQLAlchemy would pick psycopg2; psycopg 3 is ours
            url_text = "postgresql+psycopg://" + url_text[len(plain) :]
    try:
        url = sa.make_url(url_text)
        if url.get_dialect().is_async:
            from sqlalchemy.ext.asyncio import create_async_engine

            return create_async_engine(url), True
        return sa.create_engine(url), True
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"cannot open the outbox database {_safe(db)}: {exc}; write e.g. "
            "sqlite:///./app.db or postgresql+psycopg://user:pass@host/db"
        ) from None


def _safe(db: str | Engine | AsyncEngine) -> str:
    """``db`` for messages, without its password."""
    if isinstance(db, str):
        try:
            return sa.make_url(db).render_as_string(hide_password=True)
        except ArgumentError:
            return repr(db)
    return db.url.render_as_string(hide_password=True)


class _Db:
    """Runs short transactions of synchronous SQLAlchemy code without blocking the loop.

    A sync engine's work goes to one thread of its own (a SQLite connection then stays
    on one thread, and the relay's transactions never overlap); an AsyncEngine runs the
    same code through ``run_sync``. Writing each piece once, as sync code on a
    ``Connection``, keeps the SQL of both kinds of engine the same.
    """

    def __init__(self, engine: Engine | AsyncEngine) -> None:
        self.engine = engine
        self._threads: ThreadPoolExecutor | None = None

    async def tx(self, job: Callable[[Connection], T]) -> T:
        engine = self.engine
        if not isinstance(engine, Engine):
            async with engine.begin() as aconn:
                return await aconn.run_sync(job)
        if self._threads is None:
            self._threads = ThreadPoolExecutor(1, thread_name_prefix="tidings-outbox")

        def in_thread() -> T:
            with engine.begin() as conn:
                return job(conn)

        return await asyncio.get_running_loop().run_in_executor(self._threads, in_thread)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None


def _reason(exc: BaseException) -> str:
    """One line about ``exc``: a driver's message without SQLAlchemy's SQL and links."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


def _wall(conn: Connection, clock: Clock) -> Any:
    """Seconds since the epoch, for the lease's ``expires_at`` (shown, never judged by):
    the server's clock on PostgreSQL, where relays may run on several hosts (an SQL
    expression); ``clock``'s elsewhere (SQLite is one host's file)."""
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Double)
    return clock.time_ms() / 1000


def _wall_now(conn: Connection, clock: Clock) -> float:
    now = _wall(conn, clock)
    return float(now if isinstance(now, float) else conn.execute(sa.select(now)).scalar_one())


@dataclass(frozen=True, slots=True)
class _Lease:
    """The lease row as a relay read it. Two reads are the same lease state when
    ``holder``, ``renewals`` and ``expires_at`` are (a relay of an older tidings renews
    ``expires_at`` only)."""

    holder: str | None
    renewals: int
    lease: float | None  # the holder's lease length (None: written by an older relay)
    expires_at: float

    @property
    def state(self) -> tuple[str | None, int, float]:
        return (self.holder, self.renewals, self.expires_at)


# -- the outbox -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What ``tidings outbox status`` prints: the backlog and who relays it."""

    table: str
    pending: int  # rows not yet published (due and scheduled)
    due: int  # of which due now
    scheduled: int  # of which delayed to a later time
    oldest_due: datetime | None  # when the oldest due row became due (added, or deliver_at)
    next_scheduled: datetime | None  # the earliest deliver_at still in the future
    holder: str | None  # the relay named in the lease row (None: released, or never held)
    # The holder's own view, by the wall clock (the database's on PostgreSQL): seconds
    # left on the lease it last renewed; negative when overdue (the holder stopped
    # renewing, or the clock stepped). Standbys do not judge by it: they take over
    # once they have seen ``lease_renewals`` unchanged for a lease length.
    lease_expires_in: float | None
    now: datetime
    lease_renewals: int | None = None  # changes with every renewal: a live holder's moves
    lease: float | None = None  # the holder's lease length in seconds, if it wrote it

    @property
    def oldest_age(self) -> float | None:
        """Seconds the oldest due row has waited: how far behind the relay is."""
        if self.oldest_due is None:
            return None
        return max((self.now - self.oldest_due).total_seconds(), 0.0)

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "pending": self.pending,
            "due": self.due,
            "scheduled": self.scheduled,
            "oldest_due": None if self.oldest_due is None else self.oldest_due.isoformat(),
            "oldest_age_s": None if self.oldest_age is None else round(self.oldest_age, 3),
            "next_scheduled": (
                None if self.next_scheduled is None else self.next_scheduled.isoformat()
            ),
            "holder": self.holder,
            "lease_expires_in_s": (
                None if self.lease_expires_in is None else round(self.lease_expires_in, 3)
            ),
            "lease_renewals": self.lease_renewals,
            "lease_s": self.lease,
        }


# A row read by the relay: seq, topic, key, payload, and the time it orders by in a pass.
_Row = sa.Row[Any, Any, Any, Any, Any]


class Outbox:
    """Events added in the caller's database transaction, relayed to ``app``'s log.

    ``db`` is where the outbox table lives, the service's own database: a SQLAlchemy
    URL (``sqlite:///./app.db``, ``postgresql+psycopg://...``; an async driver such as
    ``sqlite+aiosqlite://`` gives an AsyncEngine) or an Engine/AsyncEngine. Only the
    relay, :meth:`create_table` and :meth:`status` use it; :meth:`add` writes through
    the caller's session. ``topic`` is the default topic of :meth:`add`. ``table``
    names the outbox table; the relay's lease lives in ``<table>_lease``.
    ``metadata``: a MetaData of yours (e.g. your models' ``Base.metadata``) to declare
    both tables in, so that Alembic's autogenerate sees them; default a new one.
    """

    def __init__(
        self,
        app: Tidings,
        db: str | Engine | AsyncEngine,
        *,
        topic: str | None = None,
        table: str = DEFAULT_TABLE,
        metadata: sa.MetaData | None = None,
    ) -> None:
        if not isinstance(table, str) or _TABLE_RE.fullmatch(table) is None:
            raise ConfigError(
                f"outbox table name {table!r} is not valid: use 1 to 48 letters, digits "
                "or '_', not starting with a digit, e.g. 'tidings_outbox'"
            )
        if topic is not None:
            check_topic_name(topic)
        self.app = app
        self.topic = topic
        self.engine, self._owns_engine = _engine_for(db)
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.table, self.lease_table = _tables(self.metadata, table, f"{table}_lease")
        t = self.table
        self._insert = sa.insert(t)
        self._delete = sa.delete(t).where(t.c.seq.in_(sa.bindparam("seqs", expanding=True)))
        cols = (t.c.seq, t.c.topic, t.c.key, t.c.payload)
        self._immediate = sa.select(*cols, t.c.created_at).where(t.c.deliver_at.is_(None))
        self._delayed = sa.select(*cols, t.c.deliver_at)
        # Relays of this outbox running in this process: a commit that added rows
        # wakes them at once instead of leaving the rows to their next poll.
        self._relays: set[OutboxRelay] = set()

    def __repr__(self) -> str:
        return f"Outbox({self.table.name!r} in {self.url})"

    @property
    def url(self) -> str:
        """The database URL, without its password (for messages)."""
        return _safe(self.engine)

    # -- adding, in the caller's transaction ------------------------------------------

    def add(
        self,
        session: Session | Connection | Any,
        payload: Any,
        *,
        topic: str | None = None,
        key: str | None = None,
        deliver_at: datetime | timedelta | None = None,
        **options: Any,
    ) -> Event:
        """Insert an event into the outbox in ``session``'s transaction; return it.

        ``session`` is a sync :class:`~sqlalchemy.orm.Session` (or scoped session) or a
        :class:`~sqlalchemy.Connection`; for an ``AsyncSession`` use :meth:`add_async`.
        ``payload`` is a registered model or a JSON value with ``type=...`` (built by
        :meth:`Tidings.build <tidings.Tidings.build>` with ``options``), or a ready
        :class:`~tidings.Event`. ``key`` is the partition key (default: the subject).
        ``deliver_at``: publish no earlier than this aware datetime, or this long from
        now (a ``timedelta``).

        Everything that can be wrong with the event (no type, an unregistered model, a
        bad topic, over ``max_event_bytes``) raises here, before anything is written,
        so the caller's transaction can still roll back or go on. The INSERT itself
        runs at once, after the session's pending changes are flushed (SQLAlchemy's
        autoflush, on by default): the event's ``seq`` is drawn after the row locks of
        the writes it reports, which is what keeps per-key order on PostgreSQL.
        """
        if _is_async(session):
            raise ConfigError(
                "outbox.add() got an async session: use 'await outbox.add_async(session, ...)'"
            )
        event, row = self._row(payload, topic, key, deliver_at, options)
        session.execute(self._insert, row)
        self._wake_after_commit(session)
        return event

    async def add_async(
        self,
        session: AsyncSession | AsyncConnection | Any,
        payload: Any,
        *,
        topic: str | None = None,
        key: str | None = None,
        deliver_at: datetime | timedelta | None = None,
        **options: Any,
    ) -> Event:
        """:meth:`add` for an ``AsyncSession`` or ``AsyncConnection``."""
        if not _is_async(session):
            raise ConfigError(
                "outbox.add_async() takes an AsyncSession or AsyncConnection; "
                "for a sync Session use outbox.add(session, ...)"
            )
        event, row = self._row(payload, topic, key, deliver_at, options)
        await session.execute(self._insert, row)
        self._wake_after_commit(getattr(session, "sync_session", None))
        return event

    def _wake_after_commit(self, session: Any) -> None:
        """Once ``session`` commits, wake this process's relays of this outbox (an ORM
        session only; rows added through a Connection wait for the next poll)."""
        if not self._relays or not isinstance(session, Session):
            return
        if not session.info.get(_LISTENING):
            # Listening for the session's life: a listener cannot remove itself while
            # the event runs, and an idle one costs a dict lookup per commit.
            session.info[_LISTENING] = True
            sa.event.listen(session, "after_commit", _wake_relays)
            sa.event.listen(session, "after_rollback", _forget_wake)
        session.info.setdefault(_WAKE, set()).add(self)

    def _row(
        self,
        payload: Any,
        topic: str | None,
        key: str | None,
        deliver_at: datetime | timedelta | None,
        options: dict[str, Any],
    ) -> tuple[Event, dict[str, Any]]:
        topic = topic if topic is not None else self.topic
        if topic is None:
            raise ConfigError(
                "outbox.add() needs a topic: pass topic=... or build the Outbox with topic=..."
            )
        check_topic_name(topic)
        if isinstance(payload, Event):
            if options:
                raise ConfigError(
                    f"outbox.add() got a ready Event and build options {sorted(options)}; "
                    "set them on the event (event.with_(...)) or pass the payload instead"
                )
            event = payload
            if key is not None and key != event.key:
                event = event.with_(partitionkey=None if key == event.subject else key)
        else:
            event = self.app.build(payload, key=key, **options)
        now = datetime.now(UTC)
        if isinstance(deliver_at, timedelta):
            deliver_at = now + deliver_at
        elif deliver_at is not None:
            if not isinstance(deliver_at, datetime):
                raise ConfigError(
                    f"deliver_at must be a datetime or a timedelta, got {deliver_at!r}"
                )
            if deliver_at.tzinfo is None:
                raise ConfigError(
                    f"deliver_at {deliver_at.isoformat()} has no time zone: pass an aware "
                    "datetime, e.g. datetime.now(UTC) + timedelta(hours=1)"
                )
            deliver_at = deliver_at.astimezone(UTC)
        row = {
            "topic": topic,
            "key": event.key,
            "event_id": event.id,
            # Encoded now: a too-large or unencodable event fails in the caller's
            # transaction, not later in the relay where no one could fix it.
            "payload": encode(event, self.app.max_event_bytes),
            "created_at": now,
            "deliver_at": deliver_at,
        }
        return event, row

    # -- tables ---------------------------------------------------------------------

    def create_table(self) -> None:
        """Create the outbox and lease tables if missing (a sync engine; the relay does
        it too). With an AsyncEngine, ``await`` :meth:`create_table_async` instead."""
        if not isinstance(self.engine, Engine):
            raise ConfigError(
                "this outbox has an AsyncEngine: use 'await outbox.create_table_async()'"
            )
        try:
            with self.engine.begin() as conn:
                self._create(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot create {self!r}: {_reason(exc)}") from exc
        finally:
            if self._owns_engine:
                self.engine.dispose()  # a one-off: leave no idle connection behind

    async def create_table_async(self) -> None:
        """:meth:`create_table` for either kind of engine, off the event loop."""
        db = _Db(self.engine)
        try:
            await db.tx(self._create)
        except sa.exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot create {self!r}: {_reason(exc)}") from exc
        finally:
            db.close()

    def _create(self, conn: Connection) -> None:
        tables = [self.table, self.lease_table]
        if conn.dialect.name == "sqlite":
            # IF NOT EXISTS, not create_all()'s look-then-create: a relay and the app
            # (or two processes) creating the tables at once must not fail on each
            # other's table. Not on PostgreSQL: CREATE INDEX IF NOT EXISTS locks the
            # table before it looks, and would wait behind any open transaction that
            # added a row; there the check comes first.
            for table in tables:
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
        else:
            self.metadata.create_all(conn, tables=tables)
        self._add_lease_columns(conn)
        lease = self.lease_table
        name = self.table.name
        if conn.execute(sa.select(lease.c.name).where(lease.c.name == name)).first() is None:
            # Two processes starting at once may both get here: the second insert does
            # nothing (both databases have ON CONFLICT DO NOTHING).
            values = {"name": name, "holder": None, "expires_at": 0.0, "renewals": 0}
            dialect = conn.dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects import postgresql

                conn.execute(postgresql.insert(lease).values(values).on_conflict_do_nothing())
            elif dialect == "sqlite":
                from sqlalchemy.dialects import sqlite

                conn.execute(sqlite.insert(lease).values(values).on_conflict_do_nothing())
            else:
                conn.execute(sa.insert(lease).values(values))

    def _add_lease_columns(self, conn: Connection) -> None:
        """Add the columns of :func:`_lease_columns` to a lease table made by an older
        tidings (its relays keep working beside the new ones: they renew ``expires_at``,
        which a standby watches too, and honour the ``expires_at`` the new ones write)."""
        lease = self.lease_table
        have = {c["name"] for c in sa.inspect(conn).get_columns(lease.name)}
        for column in _lease_columns():
            if column.name in have:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            spec = f"{column.name} {kind}"
            if not column.nullable:
                spec += f" NOT NULL DEFAULT {column.server_default.arg}"  # type: ignore[union-attr]
            table = conn.dialect.identifier_preparer.quote(lease.name)
            if conn.dialect.name == "postgresql":
                # Looked for first: ALTER TABLE locks the table even when the column is
                # there. IF NOT EXISTS: another process may be adding it right now.
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {spec}"))
                continue
            try:
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {spec}"))
            except sa.exc.OperationalError as exc:
                # SQLite has no IF NOT EXISTS here: another process added it first.
                if "duplicate column" not in str(exc):
                    raise
        if len(have) < len(lease.columns):
            log.info("%r: added the lease columns %s", self, sorted(set(lease.c.keys()) - have))

    # -- relaying -----------------------------------------------------------------------

    def relay(
        self,
        *,
        batch: int = 500,
        poll_interval: float = 0.05,
        lease: float = 10.0,
        holder: str | None = None,
        clock: Clock | None = None,
    ) -> OutboxRelay:
        """A relay for this outbox: a component for :meth:`Tidings.add_component`.

        ``batch``: rows per pass (one append, one delete); ``poll_interval``: seconds
        between looks when idle; ``lease``: seconds a relay holds the table without
        renewing (a standby takes over once it has seen no renewal for that long).
        ``clock``: whose ``monotonic()`` times the lease (default: the app's
        transport's clock, the system's unless a test replaced it).
        """
        return OutboxRelay(
            self,
            batch=batch,
            poll_interval=poll_interval,
            lease=lease,
            holder=holder,
            clock=clock,
        )

    def _due(self, conn: Connection, limit: int) -> list[_Row]:
        """Up to ``limit`` rows to publish, in publishing order.

        Immediate rows by ``seq``; delayed rows that are due by due time. The two are
        merged by time (``created_at`` against ``deliver_at``); the merge takes only
        list heads, so each list keeps its own order whatever the clocks said.
        """
        t = self.table
        immediate = conn.execute(self._immediate.order_by(t.c.seq).limit(limit)).all()
        delayed = conn.execute(
            self._delayed.where(t.c.deliver_at <= datetime.now(UTC))
            .order_by(t.c.deliver_at, t.c.seq)
            .limit(limit)
        ).all()
        rows: list[_Row] = list(immediate)
        if delayed:
            merged = heapq.merge(rows, delayed, key=lambda r: r[4])
            rows = list(itertools.islice(merged, limit))
        return rows

    def _forget(self, conn: Connection, seqs: list[int]) -> None:
        conn.execute(self._delete, {"seqs": seqs})

    def _acquire(
        self,
        conn: Connection,
        holder: str,
        seconds: float,
        clock: Clock,
        take: _Lease | None = None,
    ) -> _Lease | None:
        """Renew the lease for ``holder``, or take it if it is free, or if it is still
        in the state ``take`` (which the caller has seen unchanged for long enough).
        Return None when ``holder`` has it now, else the row as read."""
        lease = self.lease_table
        name = self.table.name
        ours = sa.or_(lease.c.holder == holder, lease.c.holder.is_(None))
        if take is not None:
            ours = sa.or_(
                ours,
                sa.and_(
                    lease.c.holder == take.holder,
                    lease.c.renewals == take.renewals,
                    lease.c.expires_at == take.expires_at,
                ),
            )
        got = conn.execute(
            sa.update(lease)
            .where(lease.c.name == name, ours)
            .values(
                holder=holder,
                renewals=lease.c.renewals + 1,
                lease_s=seconds,
                expires_at=_wall(conn, clock) + seconds,
            )
        )
        if got.rowcount == 1:
            return None
        row = conn.execute(
            sa.select(lease.c.holder, lease.c.renewals, lease.c.lease_s, lease.c.expires_at).where(
                lease.c.name == name
            )
        ).first()
        if row is None:  # the lease row is gone: someone dropped it; make it again
            self._create(conn)
            return _Lease(None, 0, None, 0.0)
        return _Lease(
            None if row[0] is None else str(row[0]),
            int(row[1]),
            None if row[2] is None else float(row[2]),
            float(row[3]),
        )

    def _release(self, conn: Connection, holder: str) -> None:
        lease = self.lease_table
        conn.execute(
            sa.update(lease)
            .where(lease.c.name == self.table.name, lease.c.holder == holder)
            .values(holder=None, renewals=lease.c.renewals + 1, expires_at=0.0)
        )

    # -- status ---------------------------------------------------------------------------

    async def status(self) -> OutboxStatus:
        """The backlog and the lease holder (``tidings outbox status``)."""
        db = _Db(self.engine)
        try:
            return await db.tx(self._status)
        except sa.exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot read {self!r}: {_reason(exc)}") from exc
        finally:
            db.close()

    def _status(self, conn: Connection) -> OutboxStatus:
        t, lease = self.table, self.lease_table
        if not sa.inspect(conn).has_table(t.name):
            raise ConfigError(
                f"there is no outbox table {t.name!r} in {_safe(self.engine)}; check --db "
                "and --table (the relay creates it, as does outbox.create_table())"
            )
        now = datetime.now(UTC)
        due_at = sa.func.coalesce(t.c.deliver_at, t.c.created_at)
        is_due = sa.or_(t.c.deliver_at.is_(None), t.c.deliver_at <= now)
        pending = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        due = conn.execute(sa.select(sa.func.count()).select_from(t).where(is_due)).scalar_one()
        oldest = conn.execute(
            sa.select(sa.type_coerce(sa.func.min(due_at), UTCDateTime)).where(is_due)
        ).scalar()
        nxt = conn.execute(
            sa.select(sa.type_coerce(sa.func.min(t.c.deliver_at), UTCDateTime)).where(
                t.c.deliver_at > now
            )
        ).scalar()
        holder, expires_in, renewals, length = None, None, None, None
        if sa.inspect(conn).has_table(lease.name):
            have = {c["name"] for c in sa.inspect(conn).get_columns(lease.name)}
            cols = [lease.c.holder, lease.c.expires_at]
            cols += [c for c in (lease.c.renewals, lease.c.lease_s) if c.name in have]
            row = conn.execute(sa.select(*cols).where(lease.c.name == t.name)).first()
            if row is not None and len(row) > 2:  # an older tidings' table has no counter
                renewals = int(row[2])
            if row is not None and row[0] is not None:
                holder = str(row[0])
                clock = getattr(self.app.transport, "clock", SYSTEM_CLOCK)
                expires_in = float(row[1]) - _wall_now(conn, clock)
                if len(row) > 2 and row[3] is not None:
                    length = float(row[3])
        return OutboxStatus(
            table=t.name,
            pending=int(pending),
            due=int(due),
            scheduled=int(pending) - int(due),
            oldest_due=oldest,
            next_scheduled=nxt,
            holder=holder,
            lease_expires_in=expires_in,
            now=now,
            lease_renewals=renewals,
            lease=length,
        )

    async def dispose(self) -> None:
        """Close the idle connections of the engine this outbox made from a URL (one
        you passed in is yours to dispose). The engine stays usable."""
        if not self._owns_engine:
            return
        engine = self.engine
        if isinstance(engine, Engine):
            engine.dispose()
        else:
            await engine.dispose()


_WAKE = "tidings_outbox_wake"  # session.info: the outboxes its transaction added to
_LISTENING = "tidings_outbox_listening"  # session.info: the listeners are in place


def _wake_relays(session: Any) -> None:
    for outbox in session.info.pop(_WAKE, ()):
        for relay in list(outbox._relays):
            relay.wake()


def _forget_wake(session: Any) -> None:
    session.info.pop(_WAKE, None)


class OutboxRelay:
    """Moves committed outbox rows to the log (see the module docstring for what it
    guarantees). A component: ``app.add_component(outbox.relay())``, or run alone by
    ``tidings outbox relay``.

    The loop: hold the lease (take it, or renew it every ``lease / 3``), read up to
    ``batch`` due rows, append each run of one topic to the log, delete those rows;
    loop at once after a full batch, else wait ``poll_interval``, or less when a
    session in this process commits rows it added (:meth:`Outbox.add` arranges
    that, so a relay beside the API relays each commit at once). Any error (the log,
    the database) is logged and the pass tried again after a backoff (0.1 s doubling
    to 5 s); nothing is deleted before its append succeeded, so nothing is lost and
    the order holds. Without the lease it looks again every ``min(lease / 4, 1)`` s.

    The lease is timed by ``clock.monotonic()`` only. An append starts only under a
    renewal sent less than ``lease / 3`` ago, or one that succeeded within two thirds
    of the lease of being sent. A standby takes over once it has seen the lease row
    unchanged for a lease length (the longer of its own and the holder's) since it
    first saw it so; a released row at once. A holder whose renewals have failed for
    two thirds of its lease, counted from the sending of the last one that succeeded,
    is fenced: :attr:`holding` turns False, and it relays nothing until it holds the
    lease again. The third left over is the margin for an append in flight and for
    the two processes' clocks running at slightly different rates.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        batch: int = 500,
        poll_interval: float = 0.05,
        lease: float = 10.0,
        holder: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise ConfigError(f"relay batch must be 1 to {MAX_BATCH}, got {batch!r}")
        if not poll_interval > 0:
            raise ConfigError(f"relay poll_interval must be > 0 seconds, got {poll_interval!r}")
        if not lease >= 0.1:
            raise ConfigError(f"relay lease must be at least 0.1 seconds, got {lease!r}")
        self.outbox = outbox
        self.batch = batch
        self.poll_interval = poll_interval
        self.lease = lease
        self.holder = holder or new_member_id()
        self.name = f"outbox-relay:{outbox.table.name}"
        self.holding = False
        self.relayed = 0  # events appended by this relay (a re-append counts again)
        self._clock = clock
        # Monotonic time at which the last renewal that succeeded was sent.
        self._renewed = 0.0
        self._ready = False
        self._db: _Db | None = None
        # The lease row as last read while another relay held it (or None held it),
        # and the monotonic time just after the read that first found it so.
        self._seen: _Lease | None = None
        self._seen_at = 0.0
        self._wakeup: asyncio.Event | None = None
        self._loop_of_run: asyncio.AbstractEventLoop | None = None

    @property
    def clock(self) -> Clock:
        """Whose ``monotonic()`` times the lease: the one given, else the app's
        transport's (looked up on each use, so a test may replace it later)."""
        if self._clock is not None:
            return self._clock
        return getattr(self.outbox.app.transport, "clock", SYSTEM_CLOCK)

    @property
    def fence(self) -> float:
        """Seconds after sending its last renewal that succeeded at which a holder
        stops trusting its lease: two thirds of it (see the class docstring)."""
        return self.lease * 2 / 3

    def wake(self) -> None:
        """Look for rows now rather than at the next poll (from any thread)."""
        loop, wakeup = self._loop_of_run, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(wakeup.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; then release the lease, so that a standby takes
        over at once."""
        self._loop_of_run = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.outbox._relays.add(self)
        async with self.outbox.app:
            try:
                await self._loop(stop)
            finally:
                self.outbox._relays.discard(self)
                await self.close()
                await self.outbox.dispose()

    async def _loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                moved = await self.relay_once()
            except Exception as exc:
                failures += 1
                delay = min(_BACKOFF_FIRST * 2 ** (failures - 1), _BACKOFF_MAX)
                log.warning(
                    "%s: pass failed (%s); trying again in %.1fs (failure %d)",
                    self.name,
                    _reason(exc),
                    delay,
                    failures,
                    exc_info=failures == 1,
                )
                await _sleep(stop, delay)
                continue
            if failures:
                log.info("%s: working again after %d failed pass(es)", self.name, failures)
                failures = 0
            if not self.holding:
                await _sleep(stop, min(self.lease / 4, 1.0))
            elif moved < self.batch:
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait ``poll_interval``, less if woken or stopped (only :meth:`run` idles)."""
        wakeup = self._wakeup
        assert wakeup is not None  # set by run()
        if not wakeup.is_set():
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
            try:
                await asyncio.wait(waits, timeout=self.poll_interval, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()
        wakeup.clear()

    async def relay_once(self) -> int:
        """One pass: hold the lease, then move up to ``batch`` due rows to the log.

        Returns how many events were appended (0 when there was nothing to do, or
        another relay holds the lease: see :attr:`holding`). Raises what failed; the
        rows stay for the next pass. The app must be started (``async with app``).
        """
        if self._db is None:
            self._db = _Db(self.outbox.engine)
        db = self._db
        if not self._ready:
            await db.tx(self.outbox._create)
            self._ready = True
        if not await self._hold():
            return 0
        rows = await db.tx(lambda conn: self.outbox._due(conn, self.batch))
        moved = 0
        transport = self.outbox.app.transport
        for topic, run in itertools.groupby(rows, key=lambda r: r[1]):
            chunk = list(run)
            # Under a renewal sent less than lease/3 ago (or, after a slow renewal,
            # 2/3 ago): a standby cannot take over for a third of the lease at least.
            if not await self._hold():
                break
            await transport.append(topic, [(r[2], r[3]) for r in chunk])
            moved += len(chunk)
            self.relayed += len(chunk)
            await db.tx(functools.partial(self.outbox._forget, seqs=[r[0] for r in chunk]))
        return moved

    async def _hold(self) -> bool:
        """Whether an append may start now under this relay's lease: renew it if it
        was last renewed ``lease / 3`` ago or more, or try to take it."""
        clock = self.clock
        sent = clock.monotonic()
        if self.holding and sent - self._renewed < self.lease / 3:
            return True
        seen = self._seen
        take = None
        if seen is not None and seen.holder is not None:
            waited = sent - self._seen_at
            if waited >= max(self.lease, seen.lease or 0.0):
                take = seen
        assert self._db is not None
        try:
            row = await self._db.tx(
                functools.partial(
                    self.outbox._acquire,
                    holder=self.holder,
                    seconds=self.lease,
                    clock=clock,
                    take=take,
                )
            )
        except BaseException:
            self._fence_if_overdue()
            raise
        after = clock.monotonic()
        if row is None:
            if take is not None:
                log.warning(
                    "%s: %s took over the lease from %s, which it saw unchanged for %.1fs",
                    self.name,
                    self.holder,
                    take.holder,
                    sent - self._seen_at,
                )
            elif not self.holding:
                log.info("%s: %s holds the lease; relaying", self.name, self.holder)
            self._renewed = sent
            self._seen = None
            self.holding = True
            # A renewal slower than the fence leaves less than a third of the lease.
            return after - sent < self.fence
        if self.holding:
            log.warning("%s: lost the lease to %s; standing by", self.name, row.holder)
        elif row.holder != (seen.holder if seen is not None else None):
            log.info(
                "%s: %s holds the lease; standing by until it is released, or unchanged for %.1fs",
                self.name,
                row.holder,
                max(self.lease, row.lease or 0.0),
            )
        if seen is None or row.state != seen.state:
            self._seen, self._seen_at = row, after
        self.holding = False
        return False

    def _fence_if_overdue(self) -> None:
        """After a renewal failed: stop holding once the fence has passed."""
        if not self.holding:
            return
        overdue = self.clock.monotonic() - self._renewed
        if overdue >= self.fence:
            self.holding = False
            self._seen = None
            log.warning(
                "%s: no renewal of the lease has succeeded for %.1fs (the fence is %.1fs "
                "of a %.1fs lease): relaying nothing until the lease is held again",
                self.name,
                overdue,
                self.fence,
                self.lease,
            )

    async def close(self, *, release: bool = True) -> None:
        """Release the lease (unless ``release=False``: leave it to run out, as a relay
        that died would) and the relay's thread. :meth:`run` does this on its way out."""
        db = self._db
        if db is None:
            return
        try:
            if release and self.holding:
                with contextlib.suppress(Exception):
                    await db.tx(lambda conn: self.outbox._release(conn, self.holder))
                    log.info("%s: released the lease", self.name)
        finally:
            self.holding = False
            self._db = None
            db.close()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
