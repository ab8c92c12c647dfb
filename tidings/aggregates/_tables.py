"""The event store's tables: one stream of events per aggregate id, and the latest
snapshot of each aggregate."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings._sql import create_missing

__all__ = ["DEFAULT_TABLE", "create", "tables"]

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
