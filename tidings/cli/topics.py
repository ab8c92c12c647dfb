"""``tidings topics``: the topics of the log, their partitions, events and sizes.

Argument parsing and printing only; the rows come from :func:`tidings.admin.topic_rows`.
"""

from __future__ import annotations

import argparse
from typing import Any

from tidings import admin
from tidings.cli.common import add_common, opened
from tidings.cli.output import print_json, table

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``topics`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "topics",
        help="list topics: partitions, events, sizes, end offsets",
        description="List the topics with their partitions, events, sizes and end offsets.",
    )
    add_common(p)
    p.set_defaults(func=cmd_topics)


async def cmd_topics(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        infos = await admin.topic_rows(app.transport)
    if args.json:
        print_json([admin.topic_json(i) for i in infos])
    elif not infos:
        print(f"no topics in {args.url}")
    else:
        print(
            table(
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


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    amount, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{amount:.1f} {unit}"
