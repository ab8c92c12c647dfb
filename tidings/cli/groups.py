"""``tidings groups [GROUP]``: consumer groups, their lag, status, lag health, dead
letters, members; ``--watch`` redraws it until Ctrl-C.

Argument parsing and printing only; the rows and lines come from
:func:`tidings.admin.group_rows`, :func:`tidings.admin.group_topics`,
:func:`tidings.admin.dead_letter_counts` and :func:`tidings.admin.lag_health`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from tidings import admin
from tidings.cli.common import UsageError, add_common, opened, positive_float, positive_int
from tidings.cli.output import print_json, table
from tidings.lag_health import WINDOW, GroupHealth, Health
from tidings.transport import GroupPartition, Transport

__all__ = ["add_commands"]

_HELP = f"""\
One line per group and topic: its partitions, lag, events lost to retention, dead
letters waiting for an operator of events read from it (DLQ; see 'tidings dlq'), the
live members holding its partitions, a status: ok (every partition held, nothing
to handle), lagging (every partition held, events to handle), partial (only some
held: a member joining or leaving), stopped (no live member); and its lag HEALTH.

HEALTH follows Burrow's rules over the last {WINDOW} samples of each partition, with
no threshold to set: OK; WARN (the offset moves but the lag never shrank over the
window); and, for a group, ERR when a partition is STOP (no sample for longer than
the window spans, with lag), STALL (samples keep coming, the offset does not move,
with lag) or REWIND (the offset went back and has not returned). Too few samples
yet: OK, with health_complete below 1 in --json. The SQLite log keeps the samples
(each member samples its partitions at every heartbeat); on Kafka, NATS and memory
nothing keeps them, so a one-shot look shows "-" and --watch judges from the samples
it takes itself, one per redraw.

--partitions: one line per partition instead (committed offset, end offset, lag, lost,
dead letters, owning member, health). --all: also each group's internal retry topic
(<group>.retry), where its replayed dead letters arrive. --watch [SECONDS]: redraw
every SECONDS (default 5) until Ctrl-C (--count N: stop after N).

--json prints a list of objects, one per line shown, with the keys
{", ".join(admin.GROUP_TOPIC_JSON_KEYS)}
(members: a list of names; health_reason says why, naming the worst partition), or
with --partitions the keys
{", ".join(admin.GROUP_JSON_KEYS)}.
With --watch, one such list per redraw, each on one line.
"""


def add_commands(sub: Any) -> None:
    """Register ``groups`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "groups",
        help="list consumer groups: lag, status, lag health, dead letters, members",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("group", nargs="?", metavar="GROUP", help="show only this group")
    p.add_argument("--partitions", action="store_true", help="one line per partition")
    p.add_argument(
        "--all", action="store_true", help="also the groups' internal topics (<group>.retry)"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=positive_float,
        metavar="SECONDS",
        help="redraw every SECONDS (default 5) until Ctrl-C",
    )
    p.add_argument("--count", type=positive_int, metavar="N", help="with --watch: stop after N")
    add_common(p)
    p.set_defaults(func=cmd_groups)


async def cmd_groups(args: argparse.Namespace) -> int:
    if args.count is not None and args.watch is None:
        raise UsageError("--count N counts redraws of --watch; add --watch")
    async with opened(args.url) as app:
        if args.watch is None:
            await _show(app.transport, args, None)
            return 0
        windows = admin.LagWindows()
        shown = 0
        while args.count is None or shown < args.count:
            if shown:
                await asyncio.sleep(args.watch)
                if not args.json and sys.stdout.isatty():
                    print("\033[H\033[J", end="")  # clear the screen between redraws
            await _show(app.transport, args, windows)
            shown += 1
    return 0


async def _show(
    transport: Transport, args: argparse.Namespace, windows: admin.LagWindows | None
) -> None:
    rows = await admin.group_rows(transport, args.group, internal=args.all)
    dlq = await admin.dead_letter_counts(transport, rows)
    health = admin.lag_health(rows, transport.clock.time_ms(), windows)
    # Watching: a JSON list per redraw, each on one line (JSON lines).
    as_json = (2 if args.watch is None else None) if args.json else False
    if not rows and not args.json:
        print(f"no groups in {args.url}")
    elif args.partitions:
        _print_partitions(rows, dlq, admin.partition_health(health, rows), as_json=as_json)
    else:
        _print_lines(rows, dlq, health, as_json=as_json)
    sys.stdout.flush()


def _name(health: Health | GroupHealth | None) -> str:
    return "-" if health is None else health.status.name


def _print_lines(
    rows: list[GroupPartition],
    dlq: dict[tuple[str, str, int], int],
    health: dict[tuple[str, str], GroupHealth] | None,
    *,
    as_json: int | bool | None,
) -> None:
    lines = admin.group_topics(rows, dlq)
    of = [None if health is None else health.get((x.group, x.topic)) for x in lines]
    if as_json is not False:
        docs = [admin.group_topic_json(x, h) for x, h in zip(lines, of, strict=True)]
        print_json(docs, indent=as_json)
        return
    print(
        table(
            ("GROUP", "TOPIC", "PARTITIONS", "LAG", "LOST", "DLQ", "MEMBERS", "STATUS", "HEALTH"),
            [
                (
                    x.group,
                    x.topic,
                    x.partitions,
                    x.lag,
                    x.lost,
                    x.dlq,
                    len(x.members),
                    x.status,
                    _name(h),
                )
                for x, h in zip(lines, of, strict=True)
            ],
        ),
    )


def _print_partitions(
    rows: list[GroupPartition],
    dlq: dict[tuple[str, str, int], int],
    health: list[Health | None],
    *,
    as_json: int | bool | None,
) -> None:
    counts = [dlq.get((r.group, r.topic, r.partition), 0) for r in rows]
    both = list(zip(rows, counts, health, strict=True))
    if as_json is not False:
        print_json([admin.group_row_json(r, n, h) for r, n, h in both], indent=as_json)
        return
    print(
        table(
            (
                "GROUP",
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "END",
                "LAG",
                "LOST",
                "DLQ",
                "MEMBER",
                "HEALTH",
            ),
            [
                (
                    r.group,
                    r.topic,
                    r.partition,
                    r.committed,
                    r.end,
                    r.lag,
                    r.lost,
                    n,
                    r.member,
                    _name(h),
                )
                for r, n, h in both
            ],
        ),
    )
