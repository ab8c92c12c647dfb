"""``tidings trace ID``: the causal tree of a request, with each group's status.

Argument parsing and printing only; the reading and the tree are :mod:`tidings.trace`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime
from typing import Any

from tidings import admin
from tidings import trace as tracing
from tidings.cli.common import add_common, opened, positive_float, positive_int
from tidings.cli.output import print_error, print_json, print_warning, utc_text

__all__ = ["add_commands"]

_TRACE_HELP = f"""\
Show everything that happened because of ID, a correlation id (a request's
X-Correlation-ID) or an event id: its events across all topics as a tree built from
each event's causationid, one line per event (time, time after its cause, type,
topic@partition:offset, the end of its id), and under each event every group that
reads its topic: handled, pending (with how many events before it the group still
has to handle), dead-lettered (with the error), replaying, replayed or purged.

It reads the last --scan records of each partition (default {tracing.DEFAULT_SCAN}),
or everything since --since, outside any group. An event whose cause is not in what
was read hangs under the top, marked "cause not seen". --follow keeps reading and
prints new events and status changes until Ctrl-C, SIGTERM or --timeout.
Exit code 1 when nothing matches ID.
"""


def add_commands(sub: Any) -> None:
    """Register ``trace`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "trace",
        help="the causal tree of a correlation id or an event id",
        description=_TRACE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", metavar="ID", help="a correlation id or an event id")
    p.add_argument(
        "--scan",
        type=positive_int,
        default=tracing.DEFAULT_SCAN,
        metavar="N",
        help=f"read the last N records of each partition (default {tracing.DEFAULT_SCAN})",
    )
    p.add_argument(
        "--since",
        metavar="TIME",
        help="read every record appended since TIME instead: ISO-8601 or an age (10m, 2h)",
    )
    p.add_argument(
        "--follow", action="store_true", help="print new events and status changes as they come"
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="with --follow: stop after this many seconds",
    )
    add_common(p)
    p.set_defaults(func=cmd_trace)


async def cmd_trace(args: argparse.Namespace) -> int:
    since = None
    if args.since is not None:
        when = admin.parse_time(args.since, datetime.now(UTC))
        since = int(when.timestamp() * 1000)
    stop = asyncio.Event()
    if args.follow:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.timeout is not None:
            loop.call_later(args.timeout, stop.set)
    async with opened(args.url) as app:
        tracer = tracing.Tracer(app.transport, args.id, scan=args.scan, since=since)
        await tracer.refresh()
        found = tracer.trace()
        if not found.roots and not args.follow:
            print_error(_nothing(found))
            return 1
        if not found.roots:
            print_warning(_nothing(found) + "; waiting for it")
        elif args.json:
            print_json(tracing.trace_json(found), indent=None if args.follow else 2)
        else:
            print("\n".join(tree_lines(found)), flush=True)
        if args.follow:
            updates = tracing.follow(tracer, stop)
            async with contextlib.aclosing(updates):
                async for _, moved in updates:
                    for change in moved:
                        _print_change(change, args.json)
    return 0


def _nothing(found: tracing.Trace) -> str:
    return (
        f"no event with the correlation id or event id {found.id!r} in the {found.scanned} "
        f"records read of {found.topics} topic(s) (widen the window with --scan or --since)"
    )


def tree_lines(found: tracing.Trace) -> list[str]:
    """The text tree: a heading, then one line per event and per group status."""
    what = "correlation id" if found.kind == "correlation" else "event"
    heading = f"{what} {found.id}"
    if found.kind == "event" and found.correlationid != found.id:
        heading += f" (correlation id {found.correlationid})"
    nodes = found.nodes()
    lines = [f"{heading}: {len(nodes)} event(s) over {found.span:.3f}s"]
    for i, root in enumerate(found.roots):
        lines.extend(_node_lines(root, "", i == len(found.roots) - 1))
    return lines


def _node_lines(node: tracing.TraceNode, prefix: str, last: bool) -> list[str]:
    lines = [prefix + ("└─ " if last else "├─ ") + event_line(node)]
    inner = prefix + ("   " if last else "│  ")
    width = max((len(g.group) for g in node.groups), default=0)
    bar = "│  " if node.children else "   "
    for status in node.groups:
        lines.append(f"{inner}{bar}{status.group.ljust(width)}  {_status_text(status, node)}")
    for i, child in enumerate(node.children):
        lines.extend(_node_lines(child, inner, i == len(node.children) - 1))
    return lines


def event_line(node: tracing.TraceNode) -> str:
    """One event: time, time after its cause, type, where it is stored, its id's end."""
    e, r = node.event, node.record
    parts = [utc_text(e.time.astimezone(UTC), "milliseconds")]
    if node.after_cause is not None:
        parts.append(f"+{node.after_cause:.3f}s")
    parts += [e.type, f"{r.topic}@{r.partition}:{r.offset}", f"…{e.id[-12:]}"]
    said = tracing.note(e)
    if said is not None:
        parts.append(f"({said})")
    if not node.cause_seen:
        parts.append(f"(cause not seen: {e.causationid})")
    if node.copies:
        parts.append(
            "(also at "
            + ", ".join(f"{c.topic}@{c.partition}:{c.offset}" for c in node.copies)
            + ")"
        )
    return "  ".join(parts)


def _status_text(status: tracing.GroupStatus, node: tracing.TraceNode) -> str:
    text = status.text
    if status.dead_at is not None:
        text += f", {(status.dead_at - node.event.time).total_seconds():.3f}s after the event"
    return text


def _print_change(change: tracing.Change, as_json: bool) -> None:
    node, status = change.node, change.group
    if as_json:
        if status is None:
            doc: dict[str, Any] = {
                "change": "event",
                "event": tracing.node_json(node, children=False),
            }
        else:
            before = change.before
            doc = {
                "change": "status",
                "event_id": node.event.id,
                "status": tracing.status_json(status, node.event),
                "before": None if before is None else tracing.status_json(before, node.event),
            }
        print_json(doc, indent=None)
    elif status is None:
        print(f"+ {event_line(node)}")
    else:
        was = "" if change.before is None else f"{change.before.text} -> "
        now = _status_text(status, node)
        print(f"  {node.event.type} …{node.event.id[-12:]}  {status.group}: {was}{now}")
    sys.stdout.flush()
