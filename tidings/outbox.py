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
- **One active relay per table**, by a lease row renewed every third of its length;
  another relay waits and takes over when the lease runs out (its holder died) or is
  released (its holder stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import re
import time
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
from tidings.transport import check_topic_name, new_member_id

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
        # Seconds since the epoch by the database's clock on PostgreSQL (relays on
        # several hosts must agree on it), by this host's on SQLite (one host).
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    return outbox, lease


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


def _clock(conn: Connection) -> float:
    """Seconds since the epoch for lease times: the server's clock on PostgreSQL, where
    relays may run on several hosts; this host's elsewhere (SQLite is one host's file)."""
    if conn.dialect.name == "postgresql":
        return float(
            conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
        )
    return time.time()


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
    holder: str | None  # the relay holding the lease, if its lease runs
    lease_expires_in: float | None  # seconds left on that lease
    now: datetime

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
        lease = self.lease_table
        name = self.table.name
        if conn.execute(sa.select(lease.c.name).where(lease.c.name == name)).first() is None:
            # Two processes starting at once may both get here: the second insert does
            # nothing (both databases have ON CONFLICT DO NOTHING).
            values = {"name": name, "holder": None, "expires_at": 0.0}
            dialect = conn.dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects import postgresql

                conn.execute(postgresql.insert(lease).values(values).on_conflict_do_nothing())
            elif dialect == "sqlite":
                from sqlalchemy.dialects import sqlite

                conn.execute(sqlite.insert(lease).values(values).on_conflict_do_nothing())
            else:
                conn.execute(sa.insert(lease).values(values))

    # -- relaying -----------------------------------------------------------------------

    def relay(
        self,
        *,
        batch: int = 500,
        poll_interval: float = 0.05,
        lease: float = 10.0,
        holder: str | None = None,
    ) -> OutboxRelay:
        """A relay for this outbox: a component for :meth:`Tidings.add_component`.

        ``batch``: rows per pass (one append, one delete); ``poll_interval``: seconds
        between looks when idle; ``lease``: seconds a relay holds the table without
        renewing (a standby takes over that long after the holder died).
        """
        return OutboxRelay(
            self, batch=batch, poll_interval=poll_interval, lease=lease, holder=holder
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

    def _acquire(self, conn: Connection, holder: str, seconds: float) -> str | None:
        """Take or renew the lease for ``holder``; return the holder after (``holder``
        itself when it got it)."""
        lease = self.lease_table
        name = self.table.name
        now = _clock(conn)
        got = conn.execute(
            sa.update(lease)
            .where(
                lease.c.name == name,
                sa.or_(
                    lease.c.holder == holder,
                    lease.c.holder.is_(None),
                    lease.c.expires_at < now,
                ),
            )
            .values(holder=holder, expires_at=now + seconds)
        )
        if got.rowcount == 1:
            return holder
        current = conn.execute(sa.select(lease.c.holder).where(lease.c.name == name)).scalar()
        if current is None:  # the lease row is gone: someone dropped it; make it again
            self._create(conn)
        return str(current) if current is not None else None

    def _release(self, conn: Connection, holder: str) -> None:
        lease = self.lease_table
        conn.execute(
            sa.update(lease)
            .where(lease.c.name == self.table.name, lease.c.holder == holder)
            .values(holder=None, expires_at=0.0)
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
        holder, expires_in = None, None
        if sa.inspect(conn).has_table(lease.name):
            row = conn.execute(
                sa.select(lease.c.holder, lease.c.expires_at).where(lease.c.name == t.name)
            ).first()
            if row is not None and row[0] is not None:
                left = float(row[1]) - _clock(conn)
                if left > 0:
                    holder, expires_in = str(row[0]), left
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
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        batch: int = 500,
        poll_interval: float = 0.05,
        lease: float = 10.0,
        holder: str | None = None,
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
        self._renewed = 0.0  # monotonic time the held lease was last renewed from
        self._ready = False
        self._db: _Db | None = None
        self._seen_holder: str | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop_of_run: asyncio.AbstractEventLoop | None = None

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
            # A lease renewed less than lease/3 ago has 2/3 of its length to go: a
            # standby cannot have taken over; appending now keeps one writer.
            if not await self._hold():
                break
            await transport.append(topic, [(r[2], r[3]) for r in chunk])
            moved += len(chunk)
            self.relayed += len(chunk)
            await db.tx(functools.partial(self.outbox._forget, seqs=[r[0] for r in chunk]))
        return moved

    async def _hold(self) -> bool:
        started = time.monotonic()
        if self.holding and started - self._renewed < self.lease / 3:
            return True
        assert self._db is not None
        now_holder = await self._db.tx(
            lambda conn: self.outbox._acquire(conn, self.holder, self.lease)
        )
        got = now_holder == self.holder
        if got:
            if not self.holding:
                log.info("%s: %s holds the lease; relaying", self.name, self.holder)
            self._renewed = started
        elif self.holding:
            log.warning("%s: lost the lease to %s; standing by", self.name, now_holder)
        elif now_holder != self._seen_holder:
            log.info(
                "%s: %s holds the lease; standing by until it is released or runs out",
                self.name,
                now_holder,
            )
        self._seen_holder = now_holder
        self.holding = got
        return got

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
