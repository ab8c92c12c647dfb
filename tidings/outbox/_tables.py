"""The outbox's tables (the rows to publish, and the relay's lease row), their DDL,
and the error of the outbox's database."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings._sql import create_missing
from tidings.errors import TidingsError
from tidings.sqltypes import UTCDateTime

__all__ = ["DEFAULT_TABLE", "OutboxError", "create", "reason", "tables"]

log = logging.getLogger("tidings.outbox")

DEFAULT_TABLE = "tidings_outbox"


class OutboxError(TidingsError):
    """The outbox's database failed or refused (it is not the log's transport)."""


def tables(metadata: sa.MetaData, name: str, lease_name: str) -> tuple[sa.Table, sa.Table]:
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
        *lease_columns(),
    )
    return outbox, lease


def lease_columns() -> list[sa.Column[Any]]:
    """The lease columns added after the first release (:func:`create` adds
    them to a lease table that lacks them)."""
    return [
        # Changed by every renewal, take-over and release: a standby that has seen it
        # unchanged for a lease length of its own monotonic time may take the lease.
        sa.Column("renewals", sa.BigInteger, nullable=False, server_default="0"),
        # The holder's lease length in seconds: a standby with a shorter one waits this.
        sa.Column("lease_s", sa.Double, nullable=True),
    ]


def reason(exc: BaseException) -> str:
    """One line about ``exc``: a driver's message without SQLAlchemy's SQL and links."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


def create(conn: Connection, outbox: sa.Table, lease: sa.Table, what: str) -> None:
    """Create the outbox table ``outbox`` and its ``lease`` table if missing, add the
    lease columns an older tidings lacked, and the lease row. ``what`` names the outbox
    in the log."""
    if conn.dialect.name == "sqlite":
        # IF NOT EXISTS, not create_all()'s look-then-create: a relay and the app
        # (or two processes) creating the tables at once must not fail on each
        # other's table. Not on PostgreSQL: CREATE INDEX IF NOT EXISTS locks the
        # table before it looks, and would wait behind any open transaction that
        # added a row; there the check comes first.
        create_missing(conn, [outbox, lease])
    else:
        outbox.metadata.create_all(conn, tables=[outbox, lease])
    _add_lease_columns(conn, lease, what)
    name = outbox.name
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


def _add_lease_columns(conn: Connection, lease: sa.Table, what: str) -> None:
    """Add the columns of :func:`lease_columns` to a lease table made by an older
    tidings (its relays keep working beside the new ones: they renew ``expires_at``,
    which a standby watches too, and honour the ``expires_at`` the new ones write)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(lease.name)}
    for column in lease_columns():
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
        log.info("%s: added the lease columns %s", what, sorted(set(lease.c.keys()) - have))
