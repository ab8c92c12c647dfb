"""``tidings topics``: the topics of the log, their partitions, events and sizes;
``tidings topics delete NAME``: delete one.

Argument parsing and printing only; the rows come from :func:`tidings.admin.topic_rows`,
the deletion is :func:`tidings.admin.delete_topic`.
"""

from __future__ import annotations

import argparse
from typing import Any

from tidings import admin
from tidings.cli.common import UsageError, add_common, opened
from tidings.cli.output import confirm, print_json, table

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``topics`` and ``topics delete NAME`` on the ``tidings`` sub-parser.

    One parser for both (not an ACTION sub-parser), so that ``tidings topics`` alone
    still lists, and a stray word after it is still an unrecognized argument.
    """
    p = sub.add_parser(
        "topics",
        help="list topics (partitions, events, sizes, end offsets), or delete one",
        description=_TOPICS_HELP,
        usage=(
            "tidings topics [--url URL] [--json]\n"
            "       tidings topics delete NAME [--yes] [--force] [--url URL] [--json]"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs="*", metavar="delete NAME", help="delete the topic NAME")
    p.add_argument("--yes", action="store_true", help="delete: do not ask for confirmation")
    p.add_argument(
        "--force",
        action="store_true",
        help="delete: even while groups with live members read the topic",
    )
    add_common(p)
    p.set_defaults(func=cmd_topics)


_TOPICS_HELP = """\
List the topics with their partitions, events, sizes and end offsets.

'tidings topics delete NAME' deletes the topic NAME: every event of it, and every
consumer group's committed offsets on it. It cannot be undone; it asks first, unless
--yes. It is refused while a group with live members (running workers) reads the
topic (GROUP.dlq and GROUP.retry count as read by GROUP), unless --force: those
workers lose the topic's partitions, and a worker still reading it makes it again,
empty. Publishing to the topic afterwards makes it again, empty, with the default
partition count.
"""


async def cmd_topics(args: argparse.Namespace) -> int:
    if args.words[:1] == ["delete"]:
        if len(args.words) != 2:
            raise UsageError(
                "topics delete needs one NAME, e.g. 'tidings topics delete task-events' "
                "(see 'tidings topics --help')"
            )
        return await cmd_delete(args, args.words[1])
    if args.words:
        raise UsageError(
            f"unrecognized arguments: {' '.join(args.words)} (see 'tidings topics --help')"
        )
    if args.yes or args.force:
        raise UsageError("--yes and --force go with 'tidings topics delete NAME'")
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
                        admin.size_text(i.size),
                        ",".join(str(p.end) for p in i.partitions),
                    )
                    for i in infos
                ],
            )
        )
    return 0


async def cmd_delete(args: argparse.Namespace, name: str) -> int:
    async with opened(args.url) as app:
        info, live = await admin.check_topic_deletable(app.transport, name, force=args.force)
        if not args.yes:
            readers = f" Groups still reading it: {', '.join(live)}." if live else ""
            yes = confirm(
                f"delete topic {name} ({info.events} event(s) in {len(info.partitions)} "
                f"partition(s)) and every group's offsets on it? This cannot be undone.{readers}"
            )
            if not yes:
                print("nothing deleted" + ("" if yes is False else " (no answer; pass --yes)"))
                return 1
        live = await admin.delete_topic(app.transport, name, force=args.force)
    if args.json:
        print_json({"topic": name, "deleted": True, "events": info.events, "groups": live})
    else:
        print(f"deleted topic {name} ({info.events} event(s))")
    return 0
