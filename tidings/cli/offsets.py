"""``tidings offsets reset GROUP --to POSITION``: move a group's committed offsets.

Argument parsing and printing only; the reset is :func:`tidings.admin.reset_offsets`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from tidings import admin
from tidings.cli.common import POSITION_HELP, add_common, opened
from tidings.cli.output import cell, print_json, table

__all__ = ["add_commands"]

_RESET_HELP = """\
Move a group's committed offsets. Without --topic, every topic the group has offsets
on is reset, except its internal retry topic (<group>.retry, where replayed dead
letters arrive: moving it would skip or repeat replays), which --all adds. Refused
while the group has live members (running workers), unless --force: they then drop
what they hold and start again from the new offsets. Prints old -> new per partition.
"""


def add_commands(sub: Any) -> None:
    """Register ``offsets reset`` on the ``tidings`` sub-parser."""
    offsets = sub.add_parser(
        "offsets", help="move a group's offsets", description="Move a group's offsets."
    )
    actions = offsets.add_subparsers(dest="action", metavar="ACTION", parser_class=type(offsets))
    actions.required = True
    p = actions.add_parser(
        "reset",
        help="reset a group's offsets to a position",
        description=_RESET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("group", metavar="GROUP", help="the consumer group, e.g. email")
    p.add_argument(
        "--topic", metavar="TOPIC", help="only this topic (default: every topic of the group)"
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="POSITION",
        help=f"{POSITION_HELP}; or an OFFSET, for every partition (kept within what is stored)",
    )
    p.add_argument("--force", action="store_true", help="reset even while workers are running")
    p.add_argument("--dry-run", action="store_true", help="show the change, make none")
    p.add_argument("--all", action="store_true", help="without --topic, reset <group>.retry too")
    add_common(p)
    p.set_defaults(func=cmd_offsets_reset)


async def cmd_offsets_reset(args: argparse.Namespace) -> int:
    position = admin.parse_position(args.to, datetime.now(UTC), offsets=True, name="--to")
    async with opened(args.url) as app:
        changes = await admin.reset_offsets(
            app.transport,
            args.group,
            position,
            topic=args.topic,
            force=args.force,
            dry_run=args.dry_run,
            internal=args.all,
        )
    if args.json:
        print_json(
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
        table(
            ("TOPIC", "PARTITION", "OLD -> NEW"),
            [(c.topic, c.partition, f"{cell(c.old)} -> {c.new}") for c in changes],
        )
    )
    return 0
