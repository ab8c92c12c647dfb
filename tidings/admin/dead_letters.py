"""Choosing dead letters from an operator's words: the filter of ``tidings dlq`` and
of the dashboard's dead-letter page."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from tidings.admin.positions import parse_time
from tidings.dead_letters import Filter
from tidings.errors import ConfigError

__all__ = ["dead_letter_filter"]


def dead_letter_filter(
    now: datetime,
    *,
    types: Iterable[str] = (),
    error_types: Iterable[str] = (),
    ids: Iterable[str] = (),
    since: str | None = None,
    until: str | None = None,
    names: tuple[str, str] = ("--since", "--until"),
) -> Filter:
    """The :class:`~tidings.dead_letters.Filter` of these words: ``since`` and
    ``until`` as :func:`~tidings.admin.parse_time` reads them (ages before ``now``);
    ConfigError naming the option (``names``) that is wrong, or both if ``since`` is
    after ``until``. Empty words match everything."""
    after = _time(since, now, names[0])
    before = _time(until, now, names[1])
    if after is not None and before is not None and after > before:
        raise ConfigError(f"{names[0]} {since} is after {names[1]} {until}")
    return Filter(
        types=frozenset(t for t in types if t),
        error_types=frozenset(e for e in error_types if e),
        ids=frozenset(i for i in ids if i),
        since=after,
        until=before,
    )


def _time(text: str | None, now: datetime, name: str) -> float | None:
    if not text:
        return None
    try:
        return parse_time(text, now).timestamp()
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
