"""``tidings cancel``: cancel a chain of work (docs/agents.md). Argument parsing and
printing only; the cancellation is :meth:`tidings.Tidings.cancel`."""

from __future__ import annotations

import argparse
from typing import Any

from tidings.cli.common import UsageError, add_common, opened
from tidings.cli.output import print_json

__all__ = ["add_commands"]

_HELP = """\
Cancel the chain of work of CORRELATION_ID (or, with --subject, the events of a
subject published until now): workers stop its handler calls under way and skip its
later events in the groups that opt in (cancellable=True), counted as cancelled, never
as failures. Appends a tidings.cancelled event to _tidings.cancellations; workers
learn of it within a second and remember it for a day.
"""


def add_commands(sub: Any) -> None:
    """Register ``cancel`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "cancel",
        help="cancel a chain of work (a correlation id, or a subject)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("correlation_id", nargs="?", metavar="CORRELATION_ID")
    p.add_argument("--subject", metavar="KEY", help="cancel this subject's events instead")
    p.add_argument("--reason", default="", help="why (shown in logs and by tidings trace)")
    add_common(p)
    p.set_defaults(func=cmd_cancel)


async def cmd_cancel(args: argparse.Namespace) -> int:
    if (args.correlation_id is None) == (args.subject is None):
        raise UsageError("give a CORRELATION_ID or --subject KEY, one of them")
    async with opened(args.url, create=True) as app:
        event = await app.cancel(args.correlation_id, subject=args.subject, reason=args.reason)
    target = args.correlation_id or f"subject {args.subject}"
    if args.json:
        print_json({"cancelled": target, "event_id": event.id, "reason": args.reason})
    else:
        print(f"cancelled {target} (event {event.id})")
    return 0
