"""A projection's database: its engine, the positions table, the transaction a
handler's writes and the position commit in, and the rebuild marker.

On SQLite every write transaction is ``BEGIN IMMEDIATE``: it takes the file's write
lock before it reads the stored position, so no delivery reads a position that a
rebuild's swap (or another delivery) changes before it commits. On PostgreSQL a
delivery holds the projection's advisory lock shared and a swap holds it exclusive:
a swap waits for the deliveries in flight, and the next ones wait for the swap.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine

from tidings._sql import create_missing, make_engine, safe_url, twice, with_psycopg
from tidings._sqlite import use_wal
from tidings.errors import ConfigError, RebuildRunning
from tidings.transport import TopicPartition

__all__ = [
    "POSITIONS",
    "REBUILDS",
    "SQLITE_TIMEOUT",
    "STALE_REBUILD",
    "ProjectionDb",
    "define_positions",
    "open_url",
]

POSITIONS = "tidings_projection_positions"
REBUILDS = "tidings_projection_rebuilds"
SQLITE_TIMEOUT = 30.0  # seconds a transaction waits for another's write lock
STALE_REBUILD = 60.0  # seconds without a sign of life after which a rebuild is dead

_PROJECTION_LOCK = "tidings.projection:"


def define_positions(metadata: sa.MetaData) -> sa.Table:
    """The positions table: per projection, topic and partition, the offset of the
    last event its handlers applied."""
    return sa.Table(
        POSITIONS,
        metadata,
        sa.Column("projection", sa.String(), primary_key=True),
        sa.Column("topic", sa.String(), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),  # Unix time
    )


def _define_rebuilds(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        REBUILDS,
        metadata,
        sa.Column("projection", sa.String(), primary_key=True),
        sa.Column("owner", sa.String(), nullable=False),  # host:pid
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
    )


def open_url(db: Any, what: str) -> URL:
    """``db`` as a SQLite file or PostgreSQL URL, or a ConfigError naming ``what``."""
    if isinstance(db, Engine):
        db = db.url
    try:
        url = with_psycopg(sa.make_url(db))
    except Exception as exc:
        raise ConfigError(f"{what}: {db!r} is not a database URL: {exc}") from exc
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"{what}: projections live in SQLite or PostgreSQL, not {backend!r}")
    if backend == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    ):
        raise ConfigError(
            f"{what}: a rebuild swaps tables between files, so a projection needs a "
            "SQLite file, e.g. 'sqlite:///./board.db', not an in-memory database"
        )
    if url.get_dialect().is_async:
        raise ConfigError(f"{what}: give a sync driver's URL (sqlite://, postgresql+psycopg://)")
    return url


def _sqlite_connect(dbapi: Any, _record: Any, synchronous: str) -> None:
    dbapi.isolation_level = None  # transactions are begun by _begin below, not the driver
    cursor = dbapi.cursor()
    try:
        cursor.execute(f"PRAGMA synchronous={synchronous}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # Reads see one snapshot; writes take the write lock first (see the module doc).
    read = conn.get_execution_options().get("tidings_read", False)
    conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def sqlite_engine(url: URL, *, synchronous: str = "FULL") -> Engine:
    """An engine on a SQLite file in WAL mode whose transactions :func:`_sqlite_begin`
    begins."""
    assert url.database
    raw = sqlite3.connect(url.database, timeout=SQLITE_TIMEOUT)
    try:
        use_wal(raw, SQLITE_TIMEOUT)
    finally:
        raw.close()
    engine: Engine = make_engine(
        url, connect_args={"timeout": SQLITE_TIMEOUT, "check_same_thread": False}
    )
    sa.event.listen(engine, "connect", lambda dbapi, rec: _sqlite_connect(dbapi, rec, synchronous))
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


class ProjectionDb:
    """Where one projection keeps its tables and positions (engines made on first use,
    disposed by :meth:`close`)."""

    def __init__(
        self, name: str, url: URL, tables: Iterable[sa.Table], engine: Engine | None = None
    ) -> None:
        self.name = name
        self.url = url
        self.tables = list(tables)
        self.metadata = sa.MetaData()
        self.positions = define_positions(self.metadata)
        self.rebuilds = _define_rebuilds(self.metadata)
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self.lock_key = _lock_key(name)
        self._engine: Engine | None = engine
        self.ready = False
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"  # of its rebuilds

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = (
                sqlite_engine(self.url)
                if self.is_sqlite
                else make_engine(self.url, pool_pre_ping=True)
            )
        return self._engine

    def describe(self) -> str:
        return safe_url(self.url)

    def create(self) -> None:
        """Create the projection's tables and the positions tables if missing."""

        def create_once() -> None:
            with self.write(locked=False) as conn:
                create_missing(conn, sa.schema.sort_tables([*self.tables, self.positions]))
                create_missing(conn, [self.rebuilds])

        twice(create_once)
        self.ready = True

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def write(self, *, locked: bool = True) -> Iterator[Connection]:
        """A write transaction (committed when the block ends, rolled back if it
        raises); ``locked``: holding the projection's lock shared (PostgreSQL)."""
        with self.engine.connect() as conn, conn.begin():
            if locked and not self.is_sqlite:
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": self.lock_key}
                )
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one snapshot, no lock held."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(tidings_read=True)
            with conn.begin():
                yield conn

    def lock_exclusive(self, conn: Connection) -> None:
        """Hold the projection's lock exclusive until ``conn``'s transaction ends
        (PostgreSQL; on SQLite the write transaction's lock is the file's)."""
        if not self.is_sqlite:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})

    # -- positions ----------------------------------------------------------------------

    def position(self, conn: Connection, topic: str, partition: int) -> int | None:
        p = self.positions.c
        return conn.execute(
            sa.select(p.last_offset).where(
                p.projection == self.name, p.topic == topic, p.partition == partition
            )
        ).scalar()

    def all_positions(self, conn: Connection) -> dict[TopicPartition, int]:
        p = self.positions.c
        rows = conn.execute(
            sa.select(p.topic, p.partition, p.last_offset).where(p.projection == self.name)
        )
        return {(topic, partition): offset for topic, partition, offset in rows}

    def store(self, conn: Connection, offsets: Mapping[TopicPartition, int]) -> None:
        """Set the positions of ``offsets`` (insert or update)."""
        if not offsets:
            return
        now = time.time()
        rows = [
            {
                "projection": self.name,
                "topic": t,
                "partition": n,
                "last_offset": o,
                "updated_at": now,
            }
            for (t, n), o in offsets.items()
        ]
        insert: Any = (
            sqlite.insert(self.positions) if self.is_sqlite else postgresql.insert(self.positions)
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["projection", "topic", "partition"],
                set_={"last_offset": insert.excluded.last_offset, "updated_at": now},
            ),
            rows,
        )

    # -- the rebuild marker ---------------------------------------------------------------

    def claim_rebuild(self, now: float | None = None) -> None:
        """Record that a rebuild of this projection runs here; RebuildRunning if one
        that gave a sign of life in the last :data:`STALE_REBUILD` seconds does."""
        try:
            self._claim(now)
        except sa.exc.IntegrityError:  # another claimed it at once (PostgreSQL): see whom
            self._claim(now)

    def _claim(self, now: float | None) -> None:
        now = time.time() if now is None else now
        r = self.rebuilds.c
        with self.write(locked=False) as conn:
            row = conn.execute(
                sa.select(r.owner, r.started_at, r.heartbeat).where(r.projection == self.name)
            ).first()
            if row is not None and now - row.heartbeat < STALE_REBUILD:
                started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row.started_at))
                raise RebuildRunning(
                    f"projection {self.name!r}: a rebuild runs since {started} in {row.owner}; "
                    f"wait for it to end (a rebuild that died is taken over {STALE_REBUILD:.0f} s "
                    "after its last sign of life)"
                )
            conn.execute(sa.delete(self.rebuilds).where(r.projection == self.name))
            conn.execute(
                sa.insert(self.rebuilds).values(
                    projection=self.name, owner=self.owner, started_at=now, heartbeat=now
                )
            )

    def heartbeat(self) -> None:
        r = self.rebuilds.c
        with self.write(locked=False) as conn:
            conn.execute(
                sa.update(self.rebuilds)
                .where(r.projection == self.name, r.owner == self.owner)
                .values(heartbeat=time.time())
            )

    def release_rebuild(self) -> None:
        """End this rebuild's record (not another's that took over a quiet one)."""
        r = self.rebuilds.c
        with self.write(locked=False) as conn:
            conn.execute(
                sa.delete(self.rebuilds).where(r.projection == self.name, r.owner == self.owner)
            )

    def check_owner(self, conn: Connection) -> None:
        """RebuildRunning unless this rebuild's record is still the projection's (a
        rebuild that went quiet may have been taken over)."""
        r = self.rebuilds.c
        owner = conn.execute(sa.select(r.owner).where(r.projection == self.name)).scalar()
        if owner != self.owner:
            raise RebuildRunning(
                f"projection {self.name!r}: this rebuild went quiet for {STALE_REBUILD:.0f} s "
                f"and another took over ({owner}); it stops without swapping"
            )

    def rebuild_running(self, conn: Connection) -> dict[str, Any] | None:
        """The running rebuild's owner, start and last sign of life (Unix times), if any."""
        r = self.rebuilds.c
        row = conn.execute(
            sa.select(r.owner, r.started_at, r.heartbeat).where(r.projection == self.name)
        ).first()
        return None if row is None else dict(row._mapping)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _lock_key(name: str) -> int:
    """The projection's PostgreSQL advisory lock: a signed 64-bit number from its name."""
    digest = zlib.crc32(f"{_PROJECTION_LOCK}{name}".encode())
    return digest - (1 << 31)
