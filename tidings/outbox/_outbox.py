"""The outbox table and :meth:`Outbox.add`: events inserted in the caller's own
transaction, for a relay (:mod:`._relay`) to move to the log."""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from tidings._sql import Threads, is_async, make_engine, safe_url, transaction, with_psycopg
from tidings.codec import encode
from tidings.envelope import Event
from tidings.errors import ConfigError
from tidings.outbox import _tables
from tidings.outbox._app import OutboxApp
from tidings.outbox._relay import OutboxRelay
from tidings.outbox._status import OutboxStatus, read_status
from tidings.outbox._tables import DEFAULT_TABLE, OutboxError, reason
from tidings.transport import Clock, check_topic_name

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

__all__ = ["Outbox"]

log = logging.getLogger("tidings.outbox")

_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


def _engine_for(db: str | Engine | AsyncEngine) -> tuple[Engine | AsyncEngine, bool]:
    """The engine for ``db`` and whether this outbox made it (and so disposes it)."""
    if isinstance(db, Engine):
        return db, False
    if is_async(db):
        return cast("AsyncEngine", db), False
    if not isinstance(db, str):
        raise ConfigError(
            f"Outbox(db=...) takes a database URL or a SQLAlchemy engine, got {type(db).__name__}"
        )
    try:
        return make_engine(with_psycopg(sa.make_url(db))), True
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"cannot open the outbox database {safe_url(db)}: {exc}; write e.g. "
            "sqlite:///./app.db or postgresql+psycopg://user:pass@host/db"
        ) from None


# A row read by the relay: seq, topic, key, payload, and the time it orders by in a pass.
_Row = sa.Row[Any, Any, Any, Any, Any, Any]


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
        app: OutboxApp,
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
        self.table, self.lease_table = _tables.tables(self.metadata, table, f"{table}_lease")
        t = self.table
        self._insert = sa.insert(t)
        self._delete = sa.delete(t).where(t.c.seq.in_(sa.bindparam("seqs", expanding=True)))
        cols = (t.c.seq, t.c.topic, t.c.key, t.c.payload)
        # (seq, topic, key, payload, time, event_id): the merge of _due takes the time,
        # the relay's log lines the event id.
        self._immediate = sa.select(*cols, t.c.created_at, t.c.event_id).where(
            t.c.deliver_at.is_(None)
        )
        self._delayed = sa.select(*cols, t.c.deliver_at, t.c.event_id)
        # Relays of this outbox running in this process: a commit that added rows
        # wakes them at once instead of leaving the rows to their next poll.
        self._relays: set[OutboxRelay] = set()

    def __repr__(self) -> str:
        return f"Outbox({self.table.name!r} in {self.url})"

    @property
    def url(self) -> str:
        """The database URL, without its password (for messages)."""
        return safe_url(self.engine)

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
        if is_async(session):
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
        if not is_async(session):
            raise ConfigError(
                "outbox.add_async() takes an AsyncSession or AsyncConnection; "
                "for a sync Session use outbox.add(session, ...)"
            )
        event, row = self._row(payload, topic, key, deliver_at, options)
        await session.execute(self._insert, row)
        self._wake_after_commit(getattr(session, "sync_session", None))
        return event

    def row(self, event: Event, *, topic: str | None = None) -> dict[str, Any]:
        """The row :meth:`add` inserts for a ready ``event``, by column name: for a writer
        that inserts it on a connection of its own in its own transaction (the
        aggregate store), which then calls :meth:`wake_relays` once it committed."""
        return self._row(event, topic, None, None, {})[1]

    def wake_relays(self) -> None:
        """Wake this process's relays of this outbox (rows were just committed)."""
        for relay in list(self._relays):
            relay.wake()

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
        elif (tracing := getattr(self.app, "tracing", None)) is None:
            event = self.app.build(payload, key=key, **options)
        else:  # a create span: the event's creation context, carried through the table
            with tracing.create(topic) as span:
                event = self.app.build(payload, key=key, **options)
                tracing.describe(span, (event,))
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
            raise OutboxError(f"cannot create {self!r}: {reason(exc)}") from exc
        finally:
            if self._owns_engine:
                self.engine.dispose()  # a one-off: leave no idle connection behind

    async def create_table_async(self) -> None:
        """:meth:`create_table` for either kind of engine, off the event loop."""
        threads = Threads(1, "tidings-outbox")
        try:
            await transaction(self.engine, self._create, threads)
        except sa.exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot create {self!r}: {reason(exc)}") from exc
        finally:
            threads.shutdown(wait=True)

    def _create(self, conn: Connection) -> None:
        _tables.create(conn, self.table, self.lease_table, repr(self))

    # -- relaying -----------------------------------------------------------------------

    def relay(
        self,
        *,
        batch: int = 500,
        poll_interval: float = 0.05,
        lease: float = 10.0,
        holder: str | None = None,
        clock: Clock | None = None,
        quiet: bool = False,
    ) -> OutboxRelay:
        """A relay for this outbox: a component for :meth:`Tidings.add_component`.

        ``batch``: rows per pass (one append, one delete); ``poll_interval``: seconds
        between looks when idle; ``lease``: seconds a relay holds the table without
        renewing (a standby takes over once it has seen no renewal for that long).
        ``clock``: whose ``monotonic()`` times the lease (default: the app's
        transport's clock, the system's unless a test replaced it). ``quiet``: the
        lease's news at DEBUG until there is something to relay (:class:`OutboxRelay`).
        """
        return OutboxRelay(
            self,
            batch=batch,
            poll_interval=poll_interval,
            lease=lease,
            holder=holder,
            clock=clock,
            quiet=quiet,
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

    # -- status ---------------------------------------------------------------------------

    async def status(self) -> OutboxStatus:
        """The backlog and the lease holder (``tidings outbox status``)."""
        threads = Threads(1, "tidings-outbox")
        t, lease, clock = self.table, self.lease_table, self.app.transport.clock
        try:
            return await transaction(
                self.engine, lambda conn: read_status(conn, t, lease, self.url, clock), threads
            )
        except sa.exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot read {self!r}: {reason(exc)}") from exc
        finally:
            threads.shutdown(wait=True)

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
        outbox.wake_relays()


def _forget_wake(session: Any) -> None:
    session.info.pop(_WAKE, None)
