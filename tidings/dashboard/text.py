"""How the pages write times."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc"]


def utc(ts: float) -> str:
    """Unix seconds as ISO-8601 UTC with a ``Z``, as the command line prints times."""
    when = datetime.fromtimestamp(ts, UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
