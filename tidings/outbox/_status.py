"""``tidings outbox status``: an outbox table's backlog and who relays it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tidings.errors import ConfigError
from tidings.outbox._lease import wall_now
from tidings.sqltypes import UTCDateTime
from tidings.transport import Clock

__all__ = ["OutboxStatus", "read_status"]


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What ``tidings outbox status`` prints: the backlog and who relays it."""

    table: str
    pending: int  # rows not yet published (due and scheduled)
    due: int  # of which due now
    scheduled: int  # of which delayed to a later time
    oldest_due: datetime | None  # when the oldest due row became due (added, or deliver_at)
    next_scheduled: datetime | None  # the earliest deliver_at still in the future
    holder: str | None  # the relay named in the lease row (None: released, or never held)
    # The holder's own view, by the wall clock (the database's on PostgreSQL): seconds
    # left on the lease it last renewed; negative when overdue (the holder stopped
    # renewing, or the clock stepped). Standbys do not judge by it: they take over
    # once they have seen ``lease_renewals`` unchanged for a lease length.
    lease_expires_in: float | None
    now: datetime
    lease_renewals: int | None = None  # changes with every renewal: a live holder's moves
    lease: float | None = None  # the holder's lease length in seconds, if it wrote it

    @property
    def oldest_age(self) -> float | None:
        """Seconds the oldest due row has waited: how far behind the relay is."""
        if self.oldest_due is None:
            return None
        return max((self.now - self.oldest_due).total_seconds(), 0.0)

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "pending": self.pending,
            "due": self.due,
            "scheduled": self.scheduled,
            "oldest_due": None if self.oldest_due is None else self.oldest_due.isoformat(),
            "oldest_age_s": None if self.oldest_age is None else round(self.oldest_age, 3),
            "next_scheduled": (
                None if self.next_scheduled is None else self.next_scheduled.isoformat()
            ),
            "holder": self.holder,
            "lease_expires_in_s": (
                None if self.lease_expires_in is None else round(self.lease_expires_in, 3)
            ),
            "lease_renewals": self.lease_renewals,
            "lease_s": self.lease,
        }


def read_status(
    conn: Connection, t: sa.Table, lease: sa.Table, where: str, clock: Clock
) -> OutboxStatus:
    """The status of the outbox table ``t`` (its lease row in ``lease``), in the
    database ``where`` (for the message if the table is missing); ``clock``: this
    host's wall clock, which SQLite's lease row is written by."""
    if not sa.inspect(conn).has_table(t.name):
        raise ConfigError(
            f"there is no outbox table {t.name!r} in {where}; check --db "
            "and --table (the relay creates it, as does outbox.create_table())"
        )
    now = datetime.now(UTC)
    due_at = sa.func.coalesce(t.c.deliver_at, t.c.created_at)
    is_due = sa.or_(t.c.deliver_at.is_(None), t.c.deliver_at <= now)
    pending = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
    due = conn.execute(sa.select(sa.func.count()).select_from(t).where(is_due)).scalar_one()
    oldest = conn.execute(
        sa.select(sa.type_coerce(sa.func.min(due_at), UTCDateTime)).where(is_due)
    ).scalar()
    nxt = conn.execute(
        sa.select(sa.type_coerce(sa.func.min(t.c.deliver_at), UTCDateTime)).where(
            t.c.deliver_at > now
        )
    ).scalar()
    holder, expires_in, renewals, length = None, None, None, None
    if sa.inspect(conn).has_table(lease.name):
        have = {c["name"] for c in sa.inspect(conn).get_columns(lease.name)}
        cols = [lease.c.holder, lease.c.expires_at]
        cols += [c for c in (lease.c.renewals, lease.c.lease_s) if c.name in have]
        row = conn.execute(sa.select(*cols).where(lease.c.name == t.name)).first()
        if row is not None and len(row) > 2:  # an older tidings' table has no counter
            renewals = int(row[2])
        if row is not None and row[0] is not None:
            holder = str(row[0])
            expires_in = float(row[1]) - wall_now(conn, clock)
            if len(row) > 2 and row[3] is not None:
                length = float(row[3])
    return OutboxStatus(
        table=t.name,
        pending=int(pending),
        due=int(due),
        scheduled=int(pending) - int(due),
        oldest_due=oldest,
        next_scheduled=nxt,
        holder=holder,
        lease_expires_in=expires_in,
        now=now,
        lease_renewals=renewals,
        lease=length,
    )
