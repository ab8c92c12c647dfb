"""Positions in a topic: earliest, latest, a time or an age, an offset."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from tidings.errors import (
    ConfigError,
    TopicNotFound,
)
from tidings.transport import (
    TopicInfo,
    Transport,
)

if TYPE_CHECKING:
    pass


Position = Literal["earliest", "latest"] | datetime | int
"""Where to move a group's offsets: an end of the log, a time, or an offset."""

# -- positions ------------------------------------------------------------------

_AGE_RE = re.compile(r"(?:[0-9]+[smhdw])+")
_AGE_PART_RE = re.compile(r"([0-9]+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_HINT = "ISO-8601 such as 2026-11-22T10:00:00Z, or an age such as 30s, 10m, 2h, 1d"


def parse_time(text: str, now: datetime) -> datetime:
    """``text`` as an aware datetime: ISO-8601 (UTC unless it carries an offset), or an
    age before ``now`` (``30s``, ``10m``, ``2h``, ``1d``, ``1w``, ``1h30m``)."""
    s = text.strip()
    try:
        if _AGE_RE.fullmatch(s):
            age = sum(int(n) * _UNIT_SECONDS[u] for n, u in _AGE_PART_RE.findall(s))
            return now - timedelta(seconds=age)
        parsed = datetime.fromisoformat(s)
    except (ValueError, OverflowError):
        raise ConfigError(f"{text!r} is not a time: write {_TIME_HINT}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_position(
    text: str, now: datetime, *, offsets: bool = False, name: str = "position"
) -> Position:
    """``earliest``, ``latest``, a time (see :func:`parse_time`) or, with ``offsets``,
    an offset; ConfigError naming ``name`` and what it accepts otherwise."""
    s = text.strip()
    if s in ("earliest", "latest"):
        return "earliest" if s == "earliest" else "latest"
    accepted = (
        "earliest, latest, " + ("an OFFSET, " if offsets else "") + f"or a time: {_TIME_HINT}"
    )
    if s.isascii() and s.isdigit():
        if offsets:
            return int(s)
        raise ConfigError(
            f"{name} {text!r} is a bare number; it takes {accepted} (an age needs a unit)"
        )
    try:
        return parse_time(s, now)
    except ConfigError:
        raise ConfigError(f"{name} {text!r} is not valid; it takes {accepted}") from None


async def topic_info(transport: Transport, topic: str) -> TopicInfo:
    """The topic's partitions and offsets; TopicNotFound if it does not exist."""
    for info in await transport.topics():
        if info.name == topic:
            return info
    raise TopicNotFound(f"topic {topic!r} does not exist in {transport.url}; see 'tidings topics'")


async def resolve_start(transport: Transport, topic: str, position: Position) -> dict[int, int]:
    """Per partition of ``topic``, the offset ``position`` names, within what is stored."""
    info = await topic_info(transport, topic)
    if isinstance(position, datetime):
        ms = int(position.timestamp() * 1000)
        found = await transport.offsets_for_time(topic, ms)
        return {
            p.partition: _clamp(found.get(p.partition, p.end), p.start, p.end)
            for p in info.partitions
        }
    if position == "earliest":
        return {p.partition: p.start for p in info.partitions}
    if position == "latest":
        return {p.partition: p.end for p in info.partitions}
    return {p.partition: _clamp(position, p.start, p.end) for p in info.partitions}


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def parse_age(text: str, name: str = "--delay") -> timedelta:
    """An age such as ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``; ConfigError otherwise."""
    s = text.strip()
    if not _AGE_RE.fullmatch(s):
        raise ConfigError(f"{name} {text!r} is not a duration: write e.g. 30s, 10m, 2h, 1d, 1h30m")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _AGE_PART_RE.findall(s)))
