"""``tidings groups [GROUP]``: consumer groups, their offsets, lag, members and DLQ depth.

Argument parsing and printing only; the rows come from :func:`tidings.admin.group_rows`
and :func:`tidings.dead_letters.depths`.
"""

from __future__ import annotations

import argparse
from typing import Any

from tidings import admin, dead_letters
from tidings.cli.common import add_common, opened
from tidings.cli.output import print_json, table

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``groups`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "groups",
        help="list consumer groups: committed offsets, lag, members",
        description="Per group, topic and partition: committed offset, end offset, lag and "
        "the live member that owns the partition, and the group's dead letters waiting "
        "(DLQ; see 'tidings dlq'). --json prints a list of objects with "
        f"the keys {', '.join(admin.GROUP_JSON_KEYS)}.",
    )
    p.add_argument("group", nargs="?", metavar="GROUP", help="show only this group")
    add_common(p)
    p.set_defaults(func=cmd_groups)


async def cmd_groups(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        rows = await admin.group_rows(app.transport, args.group)
        dlq = await dead_letters.depths(app.transport, {r.group for r in rows})
    if args.json:
        print_json([admin.group_row_json(r, dlq[r.group]) for r in rows])
    elif not rows:
        print(f"no groups in {args.url}")
    else:
        print(
            table(
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
