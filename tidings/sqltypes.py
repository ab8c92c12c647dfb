"""SQLAlchemy column types for the tables tidings keeps in a service's database, and
for the service's own tables beside them (needs ``sqlalchemy``)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from tidings.errors import ConfigError

__all__ = ["UTCDateTime"]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A column type for aware UTC datetimes on every database (the outbox's and the
    scheduler's columns use it; so may the tables a service writes beside them).

    PostgreSQL stores ``timestamptz``. SQLite has no time type: SQLAlchemy writes a
    fixed-width text and drops the zone, so values are converted to UTC first; the
    fixed width makes the text compare in time order, which the relay's
    ``deliver_at <= now`` relies on.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ConfigError(f"{value.isoformat()} has no time zone: pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
