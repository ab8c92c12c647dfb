"""Operating a log: the library behind ``tidings topics|groups|publish|tail|offsets``
(and ``tidings topics delete``).

Each function takes a started transport (or, to publish, a started Tidings app) and
returns data; ``tidings.cli`` only parses arguments and prints. A position in a
topic is ``earliest``, ``latest``, a time (ISO-8601, UTC unless it has an offset, or an
age such as ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``) or, for offset resets, an
offset that applies to every partition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import orjson

from tidings.codec import encode, from_dict
from tidings.envelope import Event, validate_type
from tidings.errors import (
    ConfigError,
    DecodeError,
    EventError,
    GroupBusy,
    GroupNotFound,
    TopicNotFound,
)
from tidings.transport import (
    GroupInfo,
    GroupPartition,
    TopicInfo,
    Transport,
    check_topic_name,
)

if TYPE_CHECKING:
    from tidings.app import Tidings

__all__ = [
    "CLI_SOURCE",
    "GROUP_JSON_KEYS",
    "OffsetChange",
    "Position",
    "build_event",
    "check_publish_topic",
    "check_topic_deletable",
    "delete_topic",
    "describe_group",
    "group_row_json",
    "group_rows",
    "live_readers",
    "parse_age",
    "parse_position",
    "parse_publish_lines",
    "parse_time",
    "publish",
    "reset_offsets",
    "resolve_start",
    "topic_info",
    "topic_json",
    "topic_rows",
]

CLI_SOURCE = "tidings-cli"
GROUP_JSON_KEYS = ("group", "topic", "partition", "committed", "end", "lag", "lost", "dlq")
# The short form of a line on stdin; any other key is a typo, not an extension.
SHORT_FORM_KEYS = frozenset({"type", "data", "subject", "correlationid"})

Position = Literal["earliest", "latest"] | datetime | int


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


# -- topics and groups ------------------------------------------------------------


async def topic_rows(transport: Transport) -> list[TopicInfo]:
    """Every topic with its partitions' start and end offsets and sizes, by name."""
    return sorted(await transport.topics(), key=lambda t: t.name)


def topic_json(info: TopicInfo) -> dict[str, Any]:
    return {
        "topic": info.name,
        "events": info.events,
        "bytes": info.size,
        "retention_ms": info.retention_ms,
        "retention_bytes": info.retention_bytes,
        "partitions": [
            {"partition": p.partition, "start": p.start, "end": p.end, "bytes": p.bytes}
            for p in info.partitions
        ],
    }


async def live_readers(transport: Transport, topic: str) -> list[GroupInfo]:
    """The groups with live members that read ``topic``: a member holds one of its
    partitions, or the group has offsets on it; ``<group>.dlq`` and ``<group>.retry``
    are read by ``<group>`` (its worker reads its dead letters outside the group)."""
    owner, dot, suffix = topic.rpartition(".")
    own = owner if dot and suffix in ("dlq", "retry") else None
    return [
        info
        for info in await transport.groups()
        if info.members
        and (
            info.group == own
            or any(row.topic == topic for row in info.partitions)
            or any(tp[0] == topic for m in info.members for tp in m.partitions)
        )
    ]


async def check_topic_deletable(
    transport: Transport, topic: str, *, force: bool = False
) -> tuple[TopicInfo, list[str]]:
    """What :func:`delete_topic` checks first, without deleting: the topic (TopicNotFound
    if missing, ConfigError for a name no topic can have) and the live groups that read
    it (see :func:`live_readers`); GroupBusy naming them, unless ``force``."""
    check_topic_name(topic)
    info = await topic_info(transport, topic)
    live = await live_readers(transport, topic)
    if live and not force:
        names = ", ".join(f"{g.group} ({len(g.members)} live member(s))" for g in live)
        raise GroupBusy(
            f"topic {topic!r} is read by group(s) with live members: {names}; stop their "
            "workers first, or pass --force (they lose its partitions, and a worker still "
            "reading it makes it again, empty)"
        )
    return info, [g.group for g in live]


async def delete_topic(transport: Transport, topic: str, *, force: bool = False) -> list[str]:
    """Delete ``topic``: its records and every group's offsets on it
    (``Transport.delete_topic``); return the live groups that read it, deleted under
    them only with ``force``.

    Refuses as :func:`check_topic_deletable` does: GroupBusy naming the live groups
    that read it, unless ``force`` (their workers lose its partitions, and one still
    reading it makes it again, empty); TopicNotFound if it does not exist.
    """
    _, live = await check_topic_deletable(transport, topic, force=force)
    await transport.delete_topic(topic)
    return live


async def describe_group(transport: Transport, group: str) -> GroupInfo:
    """One group's partitions and live members; GroupNotFound if it has neither
    committed offsets nor live members."""
    infos = await transport.groups()
    for info in infos:
        if info.group == group:
            return info
    known = ", ".join(i.group for i in infos) or "none yet"
    raise GroupNotFound(
        f"group {group!r} does not exist in {transport.url} (no committed offsets, no live "
        f"members); known groups: {known}"
    )


async def group_rows(transport: Transport, group: str | None = None) -> list[GroupPartition]:
    """Per group, topic and partition: committed and end offset, lag, owning member."""
    infos = [await describe_group(transport, group)] if group else await transport.groups()
    rows = [row for info in infos for row in info.partitions]
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


def group_row_json(row: GroupPartition, dlq: int) -> dict[str, Any]:
    """The documented JSON of one row: exactly :data:`GROUP_JSON_KEYS` (``dlq``: the
    dead letters of the row's group waiting for an operator)."""
    return {
        "group": row.group,
        "topic": row.topic,
        "partition": row.partition,
        "committed": row.committed,
        "end": row.end,
        "lag": row.lag,
        "lost": row.lost,
        "dlq": dlq,
    }


# -- publish ----------------------------------------------------------------------


def build_event(
    app: Tidings,
    event_type: str,
    data: Any,
    *,
    subject: str | None = None,
    correlation_id: str | None = None,
) -> Event:
    """An event from the app's service, checked against the app's size limit."""
    validate_type(event_type)
    event = app.build(data, type=event_type, subject=subject, correlation_id=correlation_id)
    encode(event, app.max_event_bytes)  # EventTooLarge now, not half-way through a batch
    return event


def parse_publish_lines(
    lines: Iterable[str | bytes],
    app: Tidings,
    *,
    subject: str | None = None,
    correlation_id: str | None = None,
) -> list[Event]:
    """Events from JSON lines, every one validated; blank lines are skipped.

    A line with ``specversion`` is a CloudEvents structured-mode event, published as it
    is (its id, source and time kept: ``tidings tail --json`` output can be fed back).
    Any other line is ``{"type": ..., "data": ...}`` with optional ``subject`` and
    ``correlationid`` (defaulting to ``subject``/``correlation_id`` here), and becomes an
    event of the app's service. An error names the line.
    """
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(_event_from_line(line, app, subject, correlation_id))
        except (EventError, ConfigError) as exc:
            raise type(exc)(f"stdin line {number}: {exc}") from None
    if not events:
        raise ConfigError(
            'no events on stdin: write one JSON object per line, e.g. {"type": '
            '"task.created", "data": {"id": 1}}, or give TYPE and --data'
        )
    return events


def _event_from_line(
    line: str | bytes, app: Tidings, subject: str | None, correlation_id: str | None
) -> Event:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}")
    event_type = doc.get("type")
    if isinstance(event_type, str):
        validate_type(event_type)  # its own message, for either form
    if "specversion" in doc:
        event = from_dict(doc)
        encode(event, app.max_event_bytes)
        return event
    unknown = sorted(set(doc) - SHORT_FORM_KEYS)
    if unknown:
        raise DecodeError(
            f"unknown key(s) {', '.join(unknown)}: a line is a CloudEvents event (with "
            "specversion) or has type, data and optionally subject and correlationid"
        )
    missing = [k for k in ("type", "data") if k not in doc]
    if missing:
        raise DecodeError(
            f"missing {' and '.join(repr(k) for k in missing)}; write e.g. "
            '{"type": "task.created", "data": {"id": 1}} (data may be null)'
        )
    for name in ("type", "subject", "correlationid"):
        if name in doc and not isinstance(doc[name], str):
            raise DecodeError(f"{name!r} must be a string, got {doc[name]!r:.80}")
    return build_event(
        app,
        doc["type"],
        doc["data"],
        subject=doc.get("subject", subject),
        correlation_id=doc.get("correlationid", correlation_id),
    )


async def check_publish_topic(transport: Transport, topic: str, *, create: bool = False) -> None:
    """ConfigError for an invalid name; TopicNotFound for a missing topic unless
    ``create``: a typo must not quietly start a new topic."""
    check_topic_name(topic)
    if not create:
        try:
            await topic_info(transport, topic)
        except TopicNotFound as exc:
            raise TopicNotFound(f"{exc}, or publish with --create to create it") from None


async def publish(
    app: Tidings,
    topic: str,
    events: list[Event],
    *,
    create: bool = False,
    deliver_at: datetime | None = None,
) -> None:
    """Append ``events`` to ``topic`` in one batch (see :func:`check_publish_topic`),
    or, with ``deliver_at``, schedule them for then."""
    await check_publish_topic(app.transport, topic, create=create)
    await app.publish_events(topic, events, deliver_at=deliver_at)


def parse_age(text: str, name: str = "--delay") -> timedelta:
    """An age such as ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``; ConfigError otherwise."""
    s = text.strip()
    if not _AGE_RE.fullmatch(s):
        raise ConfigError(f"{name} {text!r} is not a duration: write e.g. 30s, 10m, 2h, 1d, 1h30m")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _AGE_PART_RE.findall(s)))


# -- offsets ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffsetChange:
    group: str
    topic: str
    partition: int
    old: int | None  # None: the group had not started on this partition
    new: int


async def reset_offsets(
    transport: Transport,
    group: str,
    to: Position,
    *,
    topic: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> list[OffsetChange]:
    """Move ``group``'s committed offsets on ``topic`` (default: every topic it has) to
    ``to``; return the changes, old to new, per partition.

    Refuses with GroupBusy while the group has live members, unless ``force`` (they
    drop what they hold and start again from the new offsets). ``dry_run`` changes
    nothing. GroupNotFound for a group with neither offsets nor members.
    """
    info = await describe_group(transport, group)
    if topic is not None:
        topics = [topic]
    else:
        topics = sorted({row.topic for row in info.partitions})
        if not topics:
            raise ConfigError(f"group {group!r} has no topics yet; name one with --topic")
    if info.members and not force and not dry_run:
        # Checked for every topic before moving any, so that a refusal changes nothing;
        # set_offsets checks again, against a member joining meanwhile.
        raise GroupBusy(
            f"group {group!r} has {len(info.members)} live member(s) "
            f"({', '.join(m.member for m in info.members)}); stop its workers first, or "
            "pass --force (they will start again from the new offsets)"
        )
    committed = {(row.topic, row.partition): row.committed for row in info.partitions}
    plan: dict[str, dict[int, int]] = {}
    for name in topics:
        plan[name] = await resolve_start(transport, name, to)
    if not dry_run:
        for name, offsets in plan.items():
            await transport.set_offsets(group, name, offsets, force=force)
    return [
        OffsetChange(group, name, p, committed.get((name, p)), new)
        for name, offsets in plan.items()
        for p, new in sorted(offsets.items())
    ]
