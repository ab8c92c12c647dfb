"""The inbox's table of marks and its DDL: created if missing, on first use or ahead
(:meth:`Inbox.create_table <tidings.Inbox.create_table>`)."""

from __future__ import annotations

import sqlalchemy as sa

from tidings._sql import create_missing, twice, twice_async
from tidings.errors import ConfigError
from tidings.inbox._sides import Side, Sides, use_wal_first

__all__ = ["create", "create_async", "define"]

COLUMNS = {"consumer", "event_id", "handled_at"}


def define(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    """The marks table ``name`` in ``metadata`` (the one there, if it is an inbox's)."""
    key = f"{schema}.{name}" if schema else name
    existing = metadata.tables.get(key)
    if existing is not None:
        if {c.name for c in existing.columns} != COLUMNS:
            raise ConfigError(
                f"the metadata already has a table {key!r} that is not an inbox; "
                "choose another Inbox(table=...)"
            )
        return existing
    return sa.Table(
        name,
        metadata,
        # "<group>:<module>.<qualname>" of the handler: see Inbox.key
        sa.Column("consumer", sa.String(), primary_key=True),
        sa.Column("event_id", sa.String(), primary_key=True),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index(f"ix_{name}_handled_at", "handled_at"),
        schema=schema,
    )


def create(side: Side, table: sa.Table) -> None:
    """Create ``table`` (and its index) if missing, through a sync ``side``."""
    if side.owned:
        use_wal_first(side.engine)

    def create_once() -> None:
        with side.engine.begin() as conn:
            create_missing(conn, [table])

    twice(create_once)


async def create_async(sides: Sides, side: Side, table: sa.Table) -> None:
    """:func:`create` through either kind of ``side``, off the event loop."""
    if not side.is_async:
        await sides.threads.run(create, side, table)
        return
    if side.owned:
        await sides.threads.run(use_wal_first, side.engine)

    async def create_once() -> None:
        async with side.engine.begin() as conn:
            await conn.run_sync(create_missing, [table])

    await twice_async(create_once)
