"""``tidings tail TOPIC``: print a topic's events, with filters, without joining a group.

Argument parsing and printing only; the reading and filtering is :func:`tidings.tail.tail`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings import admin, tail
from tidings.cli.common import (
    POSITION_HELP,
    add_common,
    add_reveal,
    load_app,
    opened,
    positive_int,
    shredder_of,
)
from tidings.cli.output import clip, print_warning, utc_text
from tidings.codec import encode
from tidings.errors import ConfigError, InvalidEventType
from tidings.shredding import EXTENSION

__all__ = ["add_commands"]

_TAIL_HELP = """\
Print a topic's events from every partition, in the order they were appended,
without joining any group. One line per event: time, type, schema version (its
dataversion: "v2", "-" for none), subject, id, partition@offset and the start of the
data; --json prints each event as its CloudEvents JSON document, one a line (the
version is its "dataversion" attribute). Records that cannot be decoded are reported
on stderr and skipped. --upcast module:app shows each event at the version that app's
upcasters read it as (its handlers' version), marked "v1->v3" in the version column.
"""


def add_commands(sub: Any) -> None:
    """Register ``tail`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "tail",
        help="print a topic's events, with filters",
        description=_TAIL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topic", metavar="TOPIC", help="the topic, e.g. task-events")
    p.add_argument(
        "--from",
        dest="start",
        metavar="POSITION",
        help=f"where to start: {POSITION_HELP} (default: earliest; with --follow: latest)",
    )
    p.add_argument("--type", action="append", metavar="T", help="only this event type (repeatable)")
    p.add_argument("--subject", metavar="S", help="only events with this subject")
    p.add_argument("--correlation-id", metavar="C", help="only events with this correlation id")
    p.add_argument("--limit", type=positive_int, metavar="N", help="stop after N matching events")
    p.add_argument(
        "--follow", action="store_true", help="keep printing new events until Ctrl-C or SIGTERM"
    )
    p.add_argument(
        "--upcast",
        metavar="APP",
        help="show events as this app's handlers read them, through its upcasters "
        "(module:app, e.g. myservice.events:app)",
    )
    add_reveal(p)
    add_common(p)
    p.set_defaults(func=cmd_tail)


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
    upcast = load_app(args.upcast).registry if args.upcast else None
    reveal = shredder_of(args)  # a missing key or key store: said before connecting
    stop = asyncio.Event()
    if args.follow:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    async with opened(args.url) as app:  # a reader gone away (| head): main's to handle
        start = await admin.resolve_start(app.transport, args.topic, position)
        entries = tail.tail(
            app.transport,
            args.topic,
            start,
            where=where,
            limit=args.limit,
            follow=args.follow,
            stop=stop,
            upcast=upcast,
            reveal=reveal,
        )
        async with contextlib.aclosing(entries):
            async for entry in entries:
                _print_entry(entry, args.json, flush=args.follow)
    return 0


def _print_entry(entry: tail.TailEntry, as_json: bool, *, flush: bool) -> None:
    r = entry.record
    if entry.event is None:
        print_warning(
            f"{r.topic} {r.partition}@{r.offset} cannot be decoded, skipped: {entry.error}"
        )
        return
    if as_json:
        as_read = entry.upcast_from is None and EXTENSION not in entry.event.extensions
        raw = r.value if as_read else encode(entry.event, 1 << 30)  # upcast, or masked
        if b"\n" in raw or b"\r" in raw:  # one document a line, whatever the producer wrote
            raw = orjson.dumps(orjson.loads(raw))
        print(raw.decode("utf-8"), flush=flush)
        return
    e = entry.event
    when = utc_text(e.time.astimezone(UTC), "milliseconds")
    version = "-" if e.dataversion is None else f"v{e.dataversion}"
    if entry.upcast_from is not None:
        version = f"v{entry.upcast_from}->{version}"
    print(
        f"{when}  {e.type}  {version}  {e.subject or '-'}  {e.id}  {r.partition}@{r.offset}  "
        f"{_short(e.data)}",
        flush=flush,
    )


def _short(data: Any) -> str:
    if isinstance(data, bytes | bytearray | memoryview):
        return f"<{len(data)} bytes>"
    return clip(orjson.dumps(data).decode("utf-8"), 80, "...")
