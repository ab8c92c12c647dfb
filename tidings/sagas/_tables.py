"""The saga store's tables: instances, their history, their deadlines and the events
parked for instances not started yet; their DDL."""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings._sql import create_missing
from tidings.sqltypes import UTCDateTime

__all__ = ["DEFAULT_PREFIX", "SagaTables", "create", "define"]

DEFAULT_PREFIX = "tidings_saga"
"""The tables are ``<prefix>s``, ``<prefix>_history``, ``<prefix>_deadlines`` and
``<prefix>_parked``."""

_NAME = 200  # saga names
_KEY = 255  # business keys


class SagaTables(NamedTuple):
    sagas: sa.Table
    history: sa.Table
    deadlines: sa.Table
    parked: sa.Table


def _seq() -> sa.Column[int]:
    # INTEGER on SQLite (the rowid alias), AUTOINCREMENT: the order rows were written.
    return sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
        autoincrement=True,
    )  # fmt: skip


def define(metadata: sa.MetaData, prefix: str = DEFAULT_PREFIX) -> SagaTables:
    """The four tables, declared in ``metadata`` (or found there if declared already)."""
    names = (f"{prefix}s", f"{prefix}_history", f"{prefix}_deadlines", f"{prefix}_parked")
    if names[0] in metadata.tables:
        return SagaTables(*(metadata.tables[n] for n in names))
    return SagaTables(
        _sagas(metadata, names[0]),
        _history(metadata, names[1]),
        _deadlines(metadata, names[2]),
        _parked(metadata, names[3]),
    )


def _sagas(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("name", sa.String(_NAME), primary_key=True),
        sa.Column("key", sa.String(_KEY), primary_key=True),
        sa.Column("state", sa.String(100), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        # Optimistic concurrency: every transition is UPDATE ... WHERE version = :read.
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),  # active | finished | failed
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Index(f"{name}_status", "name", "status"),
    )


def _history(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        _seq(),
        sa.Column("name", sa.String(_NAME), nullable=False),
        sa.Column("key", sa.String(_KEY), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("from_state", sa.String(100), nullable=True),  # None: before the start
        sa.Column("to_state", sa.String(100), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),  # the instance's, after the step
        sa.Column("note", sa.Text, nullable=False),  # what happened: step, ignored, ...
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Index(f"{name}_key", "name", "key", "seq"),
        sqlite_autoincrement=True,
    )


def _deadlines(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(_NAME), nullable=False),
        sa.Column("key", sa.String(_KEY), nullable=False),
        sa.Column("deadline", sa.String(100), nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),  # pending | fired | cancelled
        sa.Column("event_id", sa.String(64), nullable=False),  # its event in the outbox
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Index(f"{name}_key", "name", "key", "status"),
    )


def _parked(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        _seq(),
        sa.Column("name", sa.String(_NAME), nullable=False),
        sa.Column("key", sa.String(_KEY), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),  # encoded, as it came
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Index(f"{name}_key", "name", "key", "seq"),
        sqlite_autoincrement=True,
    )


def create(conn: Connection, tables: SagaTables) -> None:
    """Create the tables and their indexes if missing."""
    if conn.dialect.name == "sqlite":
        # IF NOT EXISTS: two processes creating them at once do not fail on each other.
        create_missing(conn, tables)
    else:
        tables.sagas.metadata.create_all(conn, tables=list(tables))
