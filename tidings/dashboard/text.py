"""How the pages write times."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc"]


def utc(ts: float | datetime) -> str:
    """Unix seconds (or a time) as ISO-8601 UTC with a ``Z``, as the command line
    prints times."""
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
