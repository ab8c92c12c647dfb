"""The event store: aggregates saved as streams of events, one per aggregate id, with
optimistic concurrency, snapshots, and their new events in the outbox of the same
transaction."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tidings._sql import is_async, make_engine, of_kind, safe_url, with_psycopg
from tidings._sqlite import use_wal
from tidings.aggregates import _tables
from tidings.aggregates._aggregate import (
    Aggregate,
    fresh,
    from_snapshot,
    mark_saved,
    saved_version,
    take_pending,
)
from tidings.codec import encode
from tidings.contracts import Registry
from tidings.envelope import Event, new_id
from tidings.errors import AggregateNotFound, ConcurrencyConflict, ConfigError
from tidings.outbox import Outbox, OutboxApp
from tidings.shredding.fields import EXTENSION, shown
from tidings.transport import check_topic_name

__all__ = ["AggregateApp", "AggregateStore"]

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

SQLITE_TIMEOUT = 30.0  # seconds a writer waits for another's lock before failing
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


class AggregateApp(OutboxApp, Protocol):
    """What a store needs of the app (:class:`tidings.Tidings` is one): the outbox's
    needs, and the payload contracts its events are encoded and decoded with."""

    @property
    def registry(self) -> Registry: ...


class _Conflict(Exception):
    """The events insert hit a stored version (turned into ConcurrencyConflict once the
    transaction is over)."""


class AggregateStore(Generic[A]):
    """Aggregates of class ``aggregate`` stored as events in ``db`` (a SQLAlchemy URL
    or Engine: the service's own database, SQLite or PostgreSQL).

    Each aggregate id has one stream; each event is stored as the log carries it (the
    app's structured CloudEvents JSON, so upcasters apply when it is loaded). A save
    inserts the new events at the versions after the one the aggregate was loaded at:
    if another writer stored one of them first, the insert fails on the primary key and
    :class:`~tidings.errors.ConcurrencyConflict` is raised (:meth:`update` reloads and
    retries). ``topic``: the new events also go into the outbox in the same
    transaction, to this topic, for its relay to publish: the ``outbox`` given (which
    must be in the same database; its relay then serves both), else one of the default
    table (``tidings_outbox``); without a topic (or an outbox) they are only stored.
    ``snapshot_every``: every that many events a save also stores a snapshot, and a
    load starts from it (if its ``snapshot_version`` is the class's). ``table`` names
    the events table (the snapshots are in ``<table>_snapshots``); ``metadata``: a
    MetaData of yours to declare them in.
    """

    def __init__(
        self,
        app: AggregateApp,
        db: str | Engine | Any,
        aggregate: type[A],
        *,
        topic: str | None = None,
        outbox: Outbox | None = None,
        snapshot_every: int | None = None,
        table: str = _tables.DEFAULT_TABLE,
        metadata: sa.MetaData | None = None,
    ) -> None:
        if not (isinstance(aggregate, type) and issubclass(aggregate, Aggregate)):
            raise ConfigError(f"AggregateStore needs an Aggregate subclass, got {aggregate!r}")
        if snapshot_every is not None and (
            not isinstance(snapshot_every, int) or isinstance(snapshot_every, bool)
            or snapshot_every < 1
        ):  # fmt: skip
            raise ConfigError(f"snapshot_every must be an integer >= 1, got {snapshot_every!r}")
        if not isinstance(table, str) or _TABLE_RE.fullmatch(table) is None:
            raise ConfigError(
                f"aggregate table name {table!r} is not valid: use 1 to 48 letters, digits "
                "or '_', not starting with a digit"
            )
        self.app = app
        self.aggregate = aggregate
        self.snapshot_every = snapshot_every
        self.engine, self._owns_engine = _engine_for(db)
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.table, self.snapshots = _tables.tables(self.metadata, table)
        if topic is not None:
            check_topic_name(topic)
        if outbox is not None:
            topic = topic or outbox.topic
            if topic is None:
                raise ConfigError(
                    "AggregateStore(outbox=...) needs topic=... (the outbox has no default)"
                )
            if outbox.url != self.url:
                raise ConfigError(
                    f"AggregateStore: the outbox is in {outbox.url}, the events in "
                    f"{self.url}; they must share a database to be written in one transaction"
                )
        elif topic is not None:
            outbox = Outbox(app, self.engine, topic=topic, metadata=self.metadata)
        self.topic = topic
        self.outbox = outbox
        self._ready = False
        self._statements()

    def _statements(self) -> None:
        t, s = self.table, self.snapshots
        self._insert = sa.insert(t)
        self._events_after = (
            sa.select(t.c.version, t.c.event)
            .where(t.c.aggregate_id == sa.bindparam("id"), t.c.version > sa.bindparam("after"))
            .order_by(t.c.version)
        )
        self._stream_version = sa.select(sa.func.max(t.c.version)).where(
            t.c.aggregate_id == sa.bindparam("id")
        )
        self._snapshot = sa.select(s.c.version, s.c.schema_version, s.c.state).where(
            s.c.aggregate_id == sa.bindparam("id")
        )
        dialect = self.engine.dialect
        self._raw_events = _tables.DriverInsert(t, dialect)
        self._raw_snapshot = _tables.DriverInsert(s, dialect, replace_on="aggregate_id")
        if self.outbox is not None:
            self._raw_outbox = _tables.DriverInsert(self.outbox.table, dialect)
        self._integrity_errors = dialect.loaded_dbapi.IntegrityError
        upsert: Any
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        stmt = upsert(s)
        self._put_snapshot = stmt.on_conflict_do_update(
            index_elements=[s.c.aggregate_id],
            set_={c: stmt.excluded[c] for c in ("version", "schema_version", "state")},
        )

    def __repr__(self) -> str:
        return f"AggregateStore({self.aggregate.__name__} in {self.table.name} of {self.url})"

    @property
    def url(self) -> str:
        """The database URL, without its password (for messages)."""
        return safe_url(self.engine)

    # -- tables ---------------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create the events and snapshots tables, and the outbox's, if missing (the
        first load or save in the store's own transaction does it too; one in a
        caller's session does not: it only checks that they exist)."""
        with self.engine.connect() as conn:
            missing = self._missing(conn)
        if missing:
            # Looked for first: on SQLite, a CREATE ... IF NOT EXISTS would wait behind a
            # caller's transaction that holds the write lock, to change nothing.
            with self.engine.begin() as conn:
                _tables.create(conn, self.table, self.snapshots)
            if self.outbox is not None:
                self.outbox.create_table()
        self._ready = True

    def _missing(self, conn: Any) -> list[str]:
        names = [self.table.name, self.snapshots.name]
        if self.outbox is not None:
            names.append(self.outbox.table.name)
        inspector = sa.inspect(conn)
        return [n for n in names if not inspector.has_table(n)]

    def _tables_in(self, session: Any) -> None:
        """Check that the tables exist, looking through the caller's session. Not
        created from here: on SQLite the store's own connection would wait for the
        write lock the caller's transaction may hold, in this very thread."""
        _sync_only(session, "load or save")
        if self._ready:
            return
        conn = session.connection() if isinstance(session, Session) else session
        missing = self._missing(conn)
        if missing:
            raise ConfigError(
                f"{self!r}: the tables {', '.join(missing)} do not exist; create them "
                "before using a session: store.create_tables() at start, or in your "
                "migrations (store.table, store.snapshots and the outbox's)"
            )
        self._ready = True

    # -- new aggregates, loading ----------------------------------------------------------

    def create(self, aggregate_id: str | None = None) -> A:
        """A new aggregate at version 0 (``__init__``'s state), not yet stored: record
        its first events, then :meth:`save` it. ``aggregate_id`` defaults to a new
        UUIDv7."""
        if aggregate_id is None:
            aggregate_id = new_id()
        _check_id(aggregate_id)
        return fresh(self.aggregate, aggregate_id, self.app.registry)

    def load(self, aggregate_id: str, *, session: Any = None) -> A:
        """The aggregate as its stored events make it (from its snapshot, if there is a
        usable one). ``session``: read in the caller's Session or Connection. Raises
        :class:`~tidings.errors.AggregateNotFound` if no event has this id."""
        _check_id(aggregate_id)
        if session is not None:
            self._tables_in(session)
            return self._load(session, aggregate_id)
        if not self._ready:
            self.create_tables()
        with self.engine.connect() as conn:
            return self._load(conn, aggregate_id)

    def _load(self, conn: Any, aggregate_id: str) -> A:
        params: dict[str, Any] = {"id": aggregate_id, "after": 0}
        aggregate = None
        if self.snapshot_every is not None:
            snap = conn.execute(self._snapshot, params).first()
            if snap is not None and snap[1] == self.aggregate.snapshot_version:
                state = orjson.loads(snap[2])
                aggregate = from_snapshot(
                    self.aggregate, aggregate_id, snap[0], state, self.app.registry
                )
                params["after"] = snap[0]
        rows = conn.execute(self._events_after, params).all()
        if aggregate is None:
            if not rows:
                raise AggregateNotFound(
                    f"no {self.aggregate.__name__} with id {aggregate_id!r} in "
                    f"{self.table.name} ({self.url})"
                )
            aggregate = fresh(self.aggregate, aggregate_id, self.app.registry)
        decode = self.app.registry.decode_payload
        apply = aggregate.apply
        version = params["after"]
        for version, data in rows:  # noqa: B007 (the last one is the version)
            doc = orjson.loads(data)
            if EXTENSION in doc:  # its own state: opened with the app's keys (decision 0036)
                doc["data"] = shown(doc["id"], doc["data"], getattr(self.app, "shredder", None))
            apply(decode(doc["type"], doc.get("dataversion"), doc.get("data"), shared=False))
        d = aggregate.__dict__
        d["version"] = d["_saved_version"] = version
        return aggregate

    # -- saving ---------------------------------------------------------------------------

    def save(self, aggregate: A, *, session: Any = None) -> list[Event]:
        """Store the events recorded since ``aggregate`` was loaded, its snapshot when
        one is due, and (with a topic) the events in the outbox, in one transaction:
        the store's own, or the caller's ``session`` (Session or Connection), which the
        caller then commits. Returns the stored events.

        Raises :class:`~tidings.errors.ConcurrencyConflict` if another writer saved
        this aggregate since it was loaded (nothing of this save is written; with a
        ``session``, its transaction must be rolled back)."""
        pending = take_pending(aggregate)
        if not pending:
            return []
        aggregate_id = getattr(aggregate, "id", None)
        if not isinstance(aggregate, self.aggregate) or aggregate_id is None:
            raise ConfigError(
                f"{self!r} saves {self.aggregate.__name__} aggregates made by its create() "
                f"or load(), got {aggregate!r}"
            )
        if session is not None:
            self._tables_in(session)
        elif not self._ready:
            self.create_tables()
        events, rows = self._rows(aggregate, aggregate_id, pending)
        try:
            if session is not None:
                self._write(session, aggregate, events, rows)
            else:
                self._write_own(aggregate, events, rows)
        except _Conflict:
            raise ConcurrencyConflict(
                aggregate_id, saved_version(aggregate), self.stream_version(aggregate_id)
            ) from None
        mark_saved(aggregate)
        return events

    def _rows(
        self, aggregate: A, aggregate_id: str, pending: list[Any]
    ) -> tuple[list[Event], list[dict[str, Any]]]:
        build, registry, limit = self.app.build, self.app.registry, self.app.max_event_bytes
        version = saved_version(aggregate)
        events, rows = [], []
        for payload in pending:
            subject = registry.for_model(type(payload)).subject_of(payload) or aggregate_id
            event = build(payload, subject=subject)
            version += 1
            events.append(event)
            rows.append(
                {"aggregate_id": aggregate_id, "version": version, "event": encode(event, limit)}
            )
        return events, rows

    def _write(
        self, conn: Any, aggregate: A, events: list[Event], rows: list[dict[str, Any]]
    ) -> None:
        try:
            conn.execute(self._insert, rows)
        except sa.exc.IntegrityError:
            raise _Conflict from None
        if self.outbox is not None:
            for event in events:
                self.outbox.add(conn, event, topic=self.topic)
        snapshot = self._snapshot_row(aggregate)
        if snapshot is not None:
            conn.execute(self._put_snapshot, snapshot)

    def _write_own(self, aggregate: A, events: list[Event], rows: list[dict[str, Any]]) -> None:
        """:meth:`_write` in a transaction of the store's own, on a raw DBAPI connection
        (the same rows, through :class:`~._tables.DriverInsert`)."""
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                try:
                    self._raw_events.run(cursor, rows)
                except self._integrity_errors:
                    raise _Conflict from None
                if self.outbox is not None:
                    self._raw_outbox.run(
                        cursor, [self.outbox.row(e, topic=self.topic) for e in events]
                    )
                snapshot = self._snapshot_row(aggregate)
                if snapshot is not None:
                    self._raw_snapshot.run(cursor, [snapshot])
            finally:
                cursor.close()
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()  # back to the pool
        if self.outbox is not None:
            self.outbox.wake_relays()

    def _snapshot_row(self, aggregate: A) -> dict[str, Any] | None:
        """The snapshot row to store with this save, if it crosses a multiple of
        ``snapshot_every``."""
        every = self.snapshot_every
        if every is None or aggregate.version // every <= saved_version(aggregate) // every:
            return None
        return {
            "aggregate_id": aggregate.id,
            "version": aggregate.version,
            "schema_version": type(aggregate).snapshot_version,
            "state": orjson.dumps(aggregate.snapshot_state()),
        }

    def stream_version(self, aggregate_id: str) -> int:
        """The version of ``aggregate_id``'s stream as committed now (0 if none)."""
        with self.engine.connect() as conn:
            version = conn.execute(self._stream_version, {"id": aggregate_id}).scalar()
        return int(version or 0)

    def update(self, aggregate_id: str, change: Callable[[A], Any], *, attempts: int = 3) -> A:
        """Load, ``change(aggregate)`` (which records events), save; on a
        :class:`~tidings.errors.ConcurrencyConflict`, all of it again, up to
        ``attempts`` times in all. Returns the saved aggregate."""
        if attempts < 1:
            raise ConfigError(f"attempts must be at least 1, got {attempts}")
        for attempt in range(1, attempts + 1):
            aggregate = self.load(aggregate_id)
            change(aggregate)
            try:
                self.save(aggregate)
                return aggregate
            except ConcurrencyConflict:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    # -- asyncio --------------------------------------------------------------------------

    async def load_async(self, aggregate_id: str, *, session: Any = None) -> A:
        """:meth:`load` without blocking the loop: in the caller's ``AsyncSession`` (or
        ``AsyncConnection``), else in a thread."""
        if session is not None:
            return await _in_session(session, lambda s: self.load(aggregate_id, session=s))
        return await asyncio.to_thread(self.load, aggregate_id)

    async def save_async(self, aggregate: A, *, session: Any = None) -> list[Event]:
        """:meth:`save` without blocking the loop: in the caller's ``AsyncSession`` (or
        ``AsyncConnection``), else in a thread."""
        if session is not None:
            return await _in_session(session, lambda s: self.save(aggregate, session=s))
        return await asyncio.to_thread(self.save, aggregate)

    async def update_async(
        self, aggregate_id: str, change: Callable[[A], Any], *, attempts: int = 3
    ) -> A:
        """:meth:`update` in a thread."""
        return await asyncio.to_thread(self.update, aggregate_id, change, attempts=attempts)

    def dispose(self) -> None:
        """Close the idle connections of the engine this store made from a URL."""
        if self._owns_engine:
            self.engine.dispose()


async def _in_session(session: Any, job: Callable[[Any], T]) -> T:
    """``job`` with the sync Session (or Connection) under an async one, on the loop:
    one code path, the sync one, for both kinds (SQLAlchemy's ``run_sync``)."""
    if not is_async(session):
        raise ConfigError(
            "the *_async methods take an AsyncSession or AsyncConnection; for a sync "
            "Session call load()/save()"
        )
    return await session.run_sync(job)  # type: ignore[no-any-return]


def _sync_only(session: Any, what: str) -> None:
    if is_async(session):
        raise ConfigError(
            f"{what}() got an async session: use 'await store.save_async(..., session=...)' "
            "or load_async"
        )


def _check_id(aggregate_id: Any) -> None:
    if not isinstance(aggregate_id, str) or not 0 < len(aggregate_id) <= 255:
        raise ConfigError(
            f"an aggregate id is a string of 1 to 255 characters, got {aggregate_id!r:.80}"
        )


def _engine_for(db: Any) -> tuple[Engine, bool]:
    """A sync engine for ``db`` and whether the store made it (and so disposes it)."""
    if isinstance(db, Engine):
        return db, False
    if is_async(db):
        db = db.url  # the same database through its sync driver (psycopg is both)
    elif not isinstance(db, str | sa.URL):
        raise ConfigError(
            f"AggregateStore(db=...) takes a database URL or a SQLAlchemy engine, got "
            f"{type(db).__name__}"
        )
    try:
        url = of_kind(with_psycopg(sa.make_url(db)), is_async=False)
        if url.get_backend_name() != "sqlite":
            return make_engine(url, is_async=False), True
        engine: Engine = make_engine(url, is_async=False, connect_args={"timeout": SQLITE_TIMEOUT})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"cannot open the aggregate database {safe_url(db)}: {exc}; write e.g. "
            "sqlite:///./app.db or postgresql+psycopg://user:pass@host/db"
        ) from None
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine, True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL (readers never wait for the writer) and a commit that is durable on return."""
    if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        use_wal(dbapi_connection, SQLITE_TIMEOUT)
    dbapi_connection.execute("PRAGMA synchronous=FULL")
