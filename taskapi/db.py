"""The Task API's database: the ``tasks`` table and the engines it runs on.

SQLite (one file, WAL, ``synchronous=FULL``) or PostgreSQL through psycopg 3. The
outbox table of :mod:`tidings.outbox` lives in the same database, so a task and the
events that report its change commit in one transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

from taskapi.events import Priority
from tidings import ConfigError, new_id
from tidings.sqltypes import UTCDateTime

__all__ = [
    "PRIORITIES",
    "STATUSES",
    "Base",
    "Status",
    "Task",
    "UTCDateTime",
    "create_schema",
    "make_engine",
    "writer",
]

Status = Literal["open", "completed"]
PRIORITIES: tuple[str, ...] = get_args(Priority)
STATUSES: tuple[str, ...] = get_args(Status)

BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for the write lock before failing
_URL_FORMS = (
    "sqlite:///path/to/tasks.db (a file) or postgresql+psycopg://user:password@host:5432/db"
)
# An execution option read by the SQLite "begin" listener below.
_BEGIN = "taskapi_sqlite_begin"


class Base(DeclarativeBase):
    pass


class Task(Base):
    """One task. Times are aware UTC datetimes; ``id`` is a UUIDv7 (time-ordered)."""

    __tablename__ = "tasks"
    __table_args__ = (
        # The listing's order (created_at, id) read straight from an index.
        sa.Index("tasks_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str | None] = mapped_column(sa.Text)
    assignee: Mapped[str | None] = mapped_column(sa.String(100), index=True)
    due: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Non-native enums: a VARCHAR with a CHECK constraint on both databases, so a value
    # the API never accepts cannot be stored by any other path either.
    priority: Mapped[Priority] = mapped_column(
        sa.Enum(*PRIORITIES, name="task_priority", native_enum=False, create_constraint=True)
    )
    status: Mapped[Status] = mapped_column(
        sa.Enum(*STATUSES, name="task_status", native_enum=False, create_constraint=True),
        index=True,
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def make_engine(url: str) -> Engine:
    """An engine for a SQLite file or a PostgreSQL database (psycopg 3).

    Raises :class:`tidings.ConfigError` for any other kind of URL, a malformed one, an
    in-memory SQLite database (each pooled connection would see its own) or a missing
    driver. Use :func:`writer` for transactions that write.
    """
    text = url.strip() if isinstance(url, str) else ""
    for plain in ("postgres://", "postgresql://"):
        if text.startswith(plain):  # SQLAlchemy would pick psycopg2; psycopg 3 is ours
            text = "postgresql+psycopg://" + text[len(plain) :]
    try:
        parsed = sa.make_url(text)
    except ArgumentError:
        raise ConfigError(f"the task database URL {url!r} is malformed; use {_URL_FORMS}") from None
    driver = parsed.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed):
            raise ConfigError(
                f"the task database must be a SQLite file, not in memory ({url!r}); "
                f"use {_URL_FORMS}"
            )
        return _sqlite_engine(parsed)
    if driver == "postgresql+psycopg":
        try:
            return sa.create_engine(parsed, pool_pre_ping=True)
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs the psycopg driver: pip install 'psycopg[binary]'"
            ) from None
    safe = parsed.render_as_string(hide_password=True)
    raise ConfigError(f"the task database URL {safe!r} is not supported; use {_URL_FORMS}")


def _sqlite_engine(url: sa.URL) -> Engine:
    engine = sa.create_engine(
        url,
        # FastAPI runs sync endpoints in a thread pool: a pooled connection is used by
        # one request at a time, but not always on the thread that opened it.
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        assert isinstance(dbapi_conn, sqlite3.Connection)
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA synchronous=FULL")  # a commit survives a power loss
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        finally:
            cursor.close()
        # The sqlite3 module would otherwise open transactions itself, lazily and always
        # DEFERRED; SQLAlchemy's "begin" below emits BEGIN instead (SQLAlchemy's recipe).
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Why IMMEDIATE for writes: a DEFERRED transaction that reads a task and then
        # writes it takes the write lock only at the write. Two concurrent PATCHes would
        # both read the old row, and the second one's upgrade fails with SQLITE_BUSY
        # (or, across commits, it would report a stale "before"). BEGIN IMMEDIATE takes
        # the write lock first, so the read is inside the serialised writer: SQLite's
        # equivalent of PostgreSQL's SELECT ... FOR UPDATE. Reads stay DEFERRED, and in
        # WAL mode they never wait for a writer.
        mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def writer(engine: Engine) -> Engine:
    """``engine`` for write transactions: on SQLite they begin IMMEDIATE (the write
    lock is taken before the first read); elsewhere the same engine."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{_BEGIN: "IMMEDIATE"})


def create_schema(engine: Engine) -> None:
    """Create the ``tasks`` table and its indexes if missing."""
    Base.metadata.create_all(engine)
