"""The operating commands of ``tidings`` (topics, groups, publish, tail, offsets).

Argument parsing and printing only; what the commands do is in :mod:`tidings.admin`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings import admin, dead_letters, tail
from tidings.app import Tidings
from tidings.errors import ConfigError, InvalidEventType
from tidings.transports import open_transport

__all__ = ["add_commands"]

Common = Callable[[argparse.ArgumentParser], None]

_POSITION_HELP = (
    "earliest, latest, or a TIME: ISO-8601 (UTC unless it has an offset), e.g. "
    "2026-11-22T10:00:00Z, or an age: 30s, 10m, 2h, 1d, 1h30m"
)

_PUBLISH_HELP = """\
Publish one event (TOPIC TYPE --data JSON), or, with neither TYPE nor --data, a batch
of events read from stdin, one JSON object per line. A line is either

  {"type": "task.created", "data": {...}, "subject": "t-1", "correlationid": "r-9"}

(subject and correlationid optional; --subject and --correlation-id are their
defaults), published with source "tidings-cli"; or a full CloudEvents structured-mode
event (it has "specversion"), published as it is, id, source and time included, so
that 'tidings tail --json' output can be published again. Blank lines are skipped.
Every line is checked before any is published: a bad line publishes nothing.
The topic must exist, unless --create is given.

Prints the id of each published event, one a line (--json: a list of objects).
"""

_TAIL_HELP = """\
Print a topic's events from every partition, in the order they were appended,
without joining any group. One line per event: time, type, subject, id,
partition@offset and the start of the data; --json prints each event as its
CloudEvents JSON document, one a line. Records that cannot be decoded are reported
on stderr and skipped.
"""

_RESET_HELP = """\
Move a group's committed offsets. Without --topic, every topic the group has offsets
on is reset. Refused while the group has live members (running workers), unless
--force: they then drop what they hold and start again from the new offsets.
Prints old -> new per partition.
"""


def add_commands(sub: Any, common: Common) -> None:
    """Register the operating commands on the ``tidings`` sub-parser."""
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "topics",
        help="list topics: partitions, events, sizes, end offsets",
        description="List the topics with their partitions, events, sizes and end offsets.",
    )
    common(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "groups",
        help="list consumer groups: committed offsets, lag, members",
        description="Per group, topic and partition: committed offset, end offset, lag and "
        "the live member that owns the partition, and the group's dead letters waiting "
        "(DLQ; see 'tidings dlq'). --json prints a list of objects with "
        f"the keys {', '.join(admin.GROUP_JSON_KEYS)}.",
    )
    p.add_argument("group", nargs="?", metavar="GROUP", help="show only this group")
    common(p)
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser(
        "publish",
        help="publish an event, or JSON lines from stdin",
        description=_PUBLISH_HELP,
        formatter_class=raw,
    )
    p.add_argument("topic", metavar="TOPIC", help="the topic, e.g. task-events")
    p.add_argument("type", nargs="?", metavar="TYPE", help="the event type, e.g. task.created")
    p.add_argument(
        "--data", metavar="JSON", help="the payload as JSON (needs TYPE); 'null' for none"
    )
    p.add_argument("--subject", metavar="S", help="the event's subject (and partition key)")
    p.add_argument(
        "--correlation-id", metavar="C", help="the correlation id (default: the event's id)"
    )
    p.add_argument("--create", action="store_true", help="create the topic if it is missing")
    p.add_argument(
        "--delay",
        metavar="AGE",
        help="deliver no earlier than this from now (30s, 10m, 2h, 1d): the events wait in "
        "the scheduler table until a worker's relay appends them",
    )
    common(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "tail",
        help="print a topic's events, with filters",
        description=_TAIL_HELP,
        formatter_class=raw,
    )
    p.add_argument("topic", metavar="TOPIC", help="the topic, e.g. task-events")
    p.add_argument(
        "--from",
        dest="start",
        metavar="POSITION",
        help=f"where to start: {_POSITION_HELP} (default: earliest; with --follow: latest)",
    )
    p.add_argument("--type", action="append", metavar="T", help="only this event type (repeatable)")
    p.add_argument("--subject", metavar="S", help="only events with this subject")
    p.add_argument("--correlation-id", metavar="C", help="only events with this correlation id")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N matching events")
    p.add_argument(
        "--follow", action="store_true", help="keep printing new events until Ctrl-C or SIGTERM"
    )
    common(p)
    p.set_defaults(func=cmd_tail)

    offsets = sub.add_parser(
        "offsets", help="move a group's offsets", description="Move a group's offsets."
    )
    actions = offsets.add_subparsers(dest="action", metavar="ACTION", parser_class=type(offsets))
    actions.required = True
    p = actions.add_parser(
        "reset",
        help="reset a group's offsets to a position",
        description=_RESET_HELP,
        formatter_class=raw,
    )
    p.add_argument("group", metavar="GROUP", help="the consumer group, e.g. email")
    p.add_argument(
        "--topic", metavar="TOPIC", help="only this topic (default: every topic of the group)"
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="POSITION",
        help=f"{_POSITION_HELP}; or an OFFSET, for every partition (kept within what is stored)",
    )
    p.add_argument("--force", action="store_true", help="reset even while workers are running")
    p.add_argument("--dry-run", action="store_true", help="show the change, make none")
    common(p)
    p.set_defaults(func=cmd_offsets_reset)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


@contextlib.asynccontextmanager
async def _opened(url: str, *, create: bool = False) -> AsyncIterator[Tidings]:
    """The log at ``url``; only a publish that may create topics may create it."""
    transport = open_transport(url, create=create)
    async with Tidings(url, service=admin.CLI_SOURCE, transport=transport) as app:
        yield app


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    amount, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{amount:.1f} {unit}"


# -- commands -------------------------------------------------------------------


async def cmd_topics(args: argparse.Namespace) -> int:
    async with _opened(args.url) as app:
        infos = await admin.topic_rows(app.transport)
    if args.json:
        _print_json([admin.topic_json(i) for i in infos])
    elif not infos:
        print(f"no topics in {args.url}")
    else:
        print(
            _table(
                ("TOPIC", "PARTITIONS", "EVENTS", "SIZE", "END OFFSETS"),
                [
                    (
                        i.name,
                        len(i.partitions),
                        i.events,
                        _size(i.size),
                        ",".join(str(p.end) for p in i.partitions),
                    )
                    for i in infos
                ],
            )
        )
    return 0


async def cmd_groups(args: argparse.Namespace) -> int:
    async with _opened(args.url) as app:
        rows = await admin.group_rows(app.transport, args.group)
        dlq = await dead_letters.depths(app.transport, {r.group for r in rows})
    if args.json:
        _print_json([admin.group_row_json(r, dlq[r.group]) for r in rows])
    elif not rows:
        print(f"no groups in {args.url}")
    else:
        print(
            _table(
                ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LOST", "DLQ", "MEMBER"),
                [
                    (
                        r.group,
                        r.topic,
                        r.partition,
                        r.committed,
                        r.end,
                        r.lag,
                        r.lost,
                        dlq[r.group],
                        r.member,
                    )
                    for r in rows
                ],
            )
        )
    return 0


async def cmd_publish(args: argparse.Namespace) -> int:
    if args.type is None and args.data is not None:
        raise ConfigError("--data needs TYPE: tidings publish TOPIC TYPE --data JSON")
    if args.type is not None and args.data is None:
        raise ConfigError(
            "TYPE needs --data JSON (--data null for none); or give neither and write "
            "events to stdin, one JSON object per line"
        )
    deliver_at = datetime.now(UTC) + admin.parse_age(args.delay) if args.delay else None
    data: Any = None
    if args.data is not None:
        try:
            data = orjson.loads(args.data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(
                f"--data is not valid JSON ({exc.msg} at column {exc.colno}); "
                """e.g. --data '{"id": 1}'"""
            ) from None
    async with _opened(args.url, create=args.create) as app:
        await admin.check_publish_topic(app.transport, args.topic, create=args.create)
        if args.type is not None:
            events = [
                admin.build_event(
                    app,
                    args.type,
                    data,
                    subject=args.subject,
                    correlation_id=args.correlation_id,
                )
            ]
        else:
            if sys.stdin.isatty():
                print(
                    "reading events from stdin, one JSON object per line; end with Ctrl-D",
                    file=sys.stderr,
                )
            events = admin.parse_publish_lines(
                sys.stdin.buffer, app, subject=args.subject, correlation_id=args.correlation_id
            )
        await admin.publish(app, args.topic, events, create=args.create, deliver_at=deliver_at)
    if args.json:
        _print_json([{"id": e.id, "type": e.type, "subject": e.subject} for e in events])
    else:
        for event in events:
            print(event.id)
    return 0


async def cmd_tail(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    default = "latest" if args.follow else "earliest"
    position = admin.parse_position(args.start or default, now, name="--from")
    try:
        where = tail.TailFilter(
            frozenset(args.type) if args.type else None, args.subject, args.correlation_id
        )
    except InvalidEventType as exc:
        raise ConfigError(f"--type: {exc}") from None
    stop = asyncio.Event()
    if args.follow:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with _opened(args.url) as app:
            start = await admin.resolve_start(app.transport, args.topic, position)
            entries = tail.tail(
                app.transport,
                args.topic,
                start,
                where=where,
                limit=args.limit,
                follow=args.follow,
                stop=stop,
            )
            async with contextlib.aclosing(entries):
                async for entry in entries:
                    _print_entry(entry, args.json, flush=args.follow)
    except BrokenPipeError:
        # The reader went away (e.g. '| head'): stop quietly, and keep Python from
        # complaining when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _print_entry(entry: tail.TailEntry, as_json: bool, *, flush: bool) -> None:
    r = entry.record
    if entry.event is None:
        print(
            f"tidings: warning: {r.topic} {r.partition}@{r.offset} cannot be decoded, "
            f"skipped: {entry.error}",
            file=sys.stderr,
            flush=True,
        )
        return
    if as_json:
        raw = r.value
        if b"\n" in raw or b"\r" in raw:  # one document a line, whatever the producer wrote
            raw = orjson.dumps(orjson.loads(raw))
        print(raw.decode("utf-8"), flush=flush)
        return
    e = entry.event
    when = e.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(
        f"{when}  {e.type}  {e.subject or '-'}  {e.id}  {r.partition}@{r.offset}  {_short(e.data)}",
        flush=flush,
    )


def _short(data: Any, width: int = 80) -> str:
    if isinstance(data, bytes | bytearray | memoryview):
        return f"<{len(data)} bytes>"
    text = orjson.dumps(data).decode("utf-8")
    return text if len(text) <= width else text[: width - 3] + "..."


async def cmd_offsets_reset(args: argparse.Namespace) -> int:
    position = admin.parse_position(args.to, datetime.now(UTC), offsets=True, name="--to")
    async with _opened(args.url) as app:
        changes = await admin.reset_offsets(
            app.transport,
            args.group,
            position,
            topic=args.topic,
            force=args.force,
            dry_run=args.dry_run,
        )
    if args.json:
        _print_json(
            [
                {
                    "group": c.group,
                    "topic": c.topic,
                    "partition": c.partition,
                    "old": c.old,
                    "new": c.new,
                }
                for c in changes
            ]
        )
        return 0
    verb = "would reset (dry run)" if args.dry_run else "reset"
    print(f"group {args.group!r}: {verb} to {args.to}")
    print(
        _table(
            ("TOPIC", "PARTITION", "OLD -> NEW"),
            [(c.topic, c.partition, f"{_cell(c.old)} -> {c.new}") for c in changes],
        )
    )
    return 0
