"""The event store's tables: one stream of events per aggregate id, and the latest
snapshot of each aggregate."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings._sql import create_missing

__all__ = ["DEFAULT_TABLE", "DriverInsert", "create", "tables"]

DEFAULT_TABLE = "tidings_aggregate_events"


def tables(metadata: sa.MetaData, name: str) -> tuple[sa.Table, sa.Table]:
    """The events table ``name`` and its snapshots table ``<name>_snapshots``."""
    events = sa.Table(
        name,
        metadata,
        # The primary key is the optimistic concurrency check: a second writer's insert
        # of a version already stored fails, whichever committed first.
        sa.Column("aggregate_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        # The event as the log carries it (structured CloudEvents JSON).
        sa.Column("event", sa.LargeBinary, nullable=False),
        # On SQLite, the rows in the primary key's own b-tree: a save changes one page
        # of this table, not a rowid table and its key's index (a durable commit
        # writes every changed page to the WAL).
        sqlite_with_rowid=False,
    )
    snapshots = sa.Table(
        f"{name}_snapshots",
        metadata,
        sa.Column("aggregate_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),  # the events it includes
        sa.Column("schema_version", sa.Integer, nullable=False),  # the class's, when taken
        sa.Column("state", sa.LargeBinary, nullable=False),  # JSON
    )
    return events, snapshots


def create(conn: Connection, events: sa.Table, snapshots: sa.Table) -> None:
    """Create both tables if missing."""
    if conn.dialect.name == "sqlite":
        # IF NOT EXISTS: two processes creating them at once must not fail on each other.
        create_missing(conn, [events, snapshots])
    else:
        events.metadata.create_all(conn, tables=[events, snapshots])


# The driver's placeholder for each paramstyle a supported driver uses.
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


class DriverInsert:
    """An INSERT of ``table``'s rows as the driver takes it: SQL in the driver's own
    placeholders, each value through its column type's bind processor (UTCDateTime's
    zone handling, say). For the store's own transactions, on a raw DBAPI connection:
    a Core insert through a Connection cost as much CPU again as the rest of a save
    (bench/bench_aggregates.py)."""

    def __init__(
        self, table: sa.Table, dialect: sa.Dialect, *, replace_on: str | None = None
    ) -> None:
        mark = _PLACEHOLDERS.get(dialect.paramstyle)
        if mark is None:
            raise ValueError(f"no placeholder for the paramstyle {dialect.paramstyle!r}")
        columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]
        quote = dialect.identifier_preparer.quote
        self.names = [c.name for c in columns]
        self.processors = [c.type.bind_processor(dialect) for c in columns]
        self.sql = (
            f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(quote(n) for n in self.names)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )
        if replace_on is not None:  # an upsert: both SQLite and PostgreSQL write it so
            others = [quote(n) for n in self.names if n != replace_on]
            self.sql += f" ON CONFLICT ({quote(replace_on)}) DO UPDATE SET " + ", ".join(
                f"{n} = excluded.{n}" for n in others
            )

    def params(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            row[name] if process is None else process(row[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )

    def run(self, cursor: Any, rows: list[dict[str, Any]]) -> None:
        if len(rows) == 1:
            cursor.execute(self.sql, self.params(rows[0]))
        else:
            cursor.executemany(self.sql, [self.params(r) for r in rows])
