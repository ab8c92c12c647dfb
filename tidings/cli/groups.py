"""``tidings groups [GROUP]``: consumer groups, their lag, status, dead letters, members.

Argument parsing and printing only; the rows and lines come from
:func:`tidings.admin.group_rows`, :func:`tidings.admin.group_topics` and
:func:`tidings.admin.dead_letter_counts`.
"""

from __future__ import annotations

import argparse
from typing import Any

from tidings import admin
from tidings.cli.common import add_common, opened
from tidings.cli.output import print_json, table
from tidings.transport import GroupPartition

__all__ = ["add_commands"]

_HELP = f"""\
One line per group and topic: its partitions, lag, events lost to retention, dead
letters waiting for an operator of events read from it (DLQ; see 'tidings dlq'), the
live members holding its partitions, and a status: ok (every partition held, nothing
to handle), lagging (every partition held, events to handle), partial (only some
held: a member joining or leaving), stopped (no live member).

--partitions: one line per partition instead (committed offset, end offset, lag, lost,
dead letters, owning member). --all: also each group's internal retry topic
(<group>.retry), where its replayed dead letters arrive.

--json prints a list of objects, one per line shown, with the keys
{", ".join(admin.GROUP_TOPIC_JSON_KEYS)}
(members: a list of names), or with --partitions the keys
{", ".join(admin.GROUP_JSON_KEYS)}.
"""


def add_commands(sub: Any) -> None:
    """Register ``groups`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "groups",
        help="list consumer groups: lag, status, dead letters, members",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("group", nargs="?", metavar="GROUP", help="show only this group")
    p.add_argument("--partitions", action="store_true", help="one line per partition")
    p.add_argument(
        "--all", action="store_true", help="also the groups' internal topics (<group>.retry)"
    )
    add_common(p)
    p.set_defaults(func=cmd_groups)


async def cmd_groups(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        rows = await admin.group_rows(app.transport, args.group, internal=args.all)
        dlq = await admin.dead_letter_counts(app.transport, rows)
    if not rows and not args.json:
        print(f"no groups in {args.url}")
    elif args.partitions:
        _print_partitions(rows, dlq, as_json=args.json)
    else:
        lines = admin.group_topics(rows, dlq)
        if args.json:
            print_json([admin.group_topic_json(line) for line in lines])
            return 0
        print(
            table(
                ("GROUP", "TOPIC", "PARTITIONS", "LAG", "LOST", "DLQ", "MEMBERS", "STATUS"),
                [
                    (x.group, x.topic, x.partitions, x.lag, x.lost, x.dlq, len(x.members), x.status)
                    for x in lines
                ],
            )
        )
    return 0


def _print_partitions(
    rows: list[GroupPartition], dlq: dict[tuple[str, str, int], int], *, as_json: bool
) -> None:
    counts = [dlq.get((r.group, r.topic, r.partition), 0) for r in rows]
    if as_json:
        print_json([admin.group_row_json(r, n) for r, n in zip(rows, counts, strict=True)])
        return
    print(
        table(
            ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LOST", "DLQ", "MEMBER"),
            [
                (r.group, r.topic, r.partition, r.committed, r.end, r.lag, r.lost, n, r.member)
                for r, n in zip(rows, counts, strict=True)
            ],
        )
    )
