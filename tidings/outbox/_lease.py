"""The relay's lease row: taken, renewed and released in one statement each. Who may
hold it, and when a standby takes over, is the relay's decision (:mod:`._relay`); the
wall clock written here is shown, never judged by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings.transport import Clock

__all__ = ["Lease", "acquire", "release", "wall_now"]


def _wall(conn: Connection, clock: Clock) -> Any:
    """Seconds since the epoch, for the lease's ``expires_at`` (shown, never judged by):
    the server's clock on PostgreSQL, where relays may run on several hosts (an SQL
    expression); ``clock``'s elsewhere (SQLite is one host's file)."""
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Double)
    return clock.time_ms() / 1000


def wall_now(conn: Connection, clock: Clock) -> float:
    now = _wall(conn, clock)
    return float(now if isinstance(now, float) else conn.execute(sa.select(now)).scalar_one())


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease row as a relay read it. Two reads are the same lease state when
    ``holder``, ``renewals`` and ``expires_at`` are (a relay of an older tidings renews
    ``expires_at`` only)."""

    holder: str | None
    renewals: int
    lease: float | None  # the holder's lease length (None: written by an older relay)
    expires_at: float

    @property
    def state(self) -> tuple[str | None, int, float]:
        return (self.holder, self.renewals, self.expires_at)


def acquire(
    conn: Connection,
    lease: sa.Table,
    name: str,
    *,
    holder: str,
    seconds: float,
    clock: Clock,
    take: Lease | None,
    recreate: Callable[[Connection], None],
) -> Lease | None:
    """Renew the lease ``name`` (a row of ``lease``) for ``holder``, or take it if it is
    free, or if it is still in the state ``take`` (which the caller has seen unchanged
    for long enough). Return None when ``holder`` has it now, else the row as read
    (``recreate`` makes the tables and the row again if the row is gone)."""
    ours = sa.or_(lease.c.holder == holder, lease.c.holder.is_(None))
    if take is not None:
        ours = sa.or_(
            ours,
            sa.and_(
                lease.c.holder == take.holder,
                lease.c.renewals == take.renewals,
                lease.c.expires_at == take.expires_at,
            ),
        )
    got = conn.execute(
        sa.update(lease)
        .where(lease.c.name == name, ours)
        .values(
            holder=holder,
            renewals=lease.c.renewals + 1,
            lease_s=seconds,
            expires_at=_wall(conn, clock) + seconds,
        )
    )
    if got.rowcount == 1:
        return None
    row = conn.execute(
        sa.select(lease.c.holder, lease.c.renewals, lease.c.lease_s, lease.c.expires_at).where(
            lease.c.name == name
        )
    ).first()
    if row is None:  # the lease row is gone: someone dropped it; make it again
        recreate(conn)
        return Lease(None, 0, None, 0.0)
    return Lease(
        None if row[0] is None else str(row[0]),
        int(row[1]),
        None if row[2] is None else float(row[2]),
        float(row[3]),
    )


def release(conn: Connection, lease: sa.Table, name: str, holder: str) -> None:
    """Give the lease ``name`` up, if ``holder`` has it: a standby takes it at once."""
    conn.execute(
        sa.update(lease)
        .where(lease.c.name == name, lease.c.holder == holder)
        .values(holder=None, renewals=lease.c.renewals + 1, expires_at=0.0)
    )
