"""``tidings dlq list|show|replay|purge GROUP``: operating a group's dead letters.

Argument parsing and printing only; the work is in :mod:`tidings.dead_letters`.
"""

from __future__ import annotations

import argparse
import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings import admin, dead_letters
from tidings.cli.common import add_common, add_reveal, opened, shredder_of
from tidings.cli.output import cell, clip, confirm, print_json, progress, table, utc_text
from tidings.dead_letters import DeadLetter, Filter
from tidings.errors import TidingsError

__all__ = ["add_commands"]

_DLQ_HELP = """\
A group's dead letters are the events it gave up on: handlers that failed until
their retry policy stopped, payloads that do not match their model, records that
cannot be decoded, and (in a sequenced group) later events of the same key parked
behind them. They are kept, byte for byte, in the topic GROUP.dlq.

  list    the entries waiting (--all: also replayed, resolved and purged ones)
  show    one entry in full: error, traceback, the original event
  replay  send entries back to GROUP only (through GROUP.retry), in order
  purge   drop entries (asks first, unless --yes)

Filters (list, replay, purge): --type, --error-type, --since, --until, --id.
"""

PROGRESS_FROM = 100  # replays at least this large show a progress bar


def add_commands(sub: Any) -> None:
    """Register ``dlq list|show|replay|purge`` on the ``tidings`` sub-parser."""
    dlq = sub.add_parser(
        "dlq",
        help="list, show, replay or purge a group's dead letters",
        description=_DLQ_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="action", metavar="ACTION", parser_class=type(dlq))
    actions.required = True

    p = actions.add_parser("list", help="list dead letters", description="List dead letters.")
    _filters(p)
    p.add_argument(
        "--all", action="store_true", help="also entries already replayed, resolved or purged"
    )
    add_common(p)
    p.set_defaults(func=cmd_list)

    p = actions.add_parser(
        "show", help="show one dead letter in full", description="Show one dead letter in full."
    )
    p.add_argument("group", metavar="GROUP", help="the consumer group, e.g. email")
    p.add_argument("id", metavar="ID", help="the entry id, or the event's id")
    add_reveal(p)
    add_common(p)
    p.set_defaults(func=cmd_show)

    p = actions.add_parser(
        "replay",
        help="re-deliver dead letters to their group only",
        description="Send the matching dead letters back to GROUP (never to the other groups "
        "of their topic), keeping their ids and correlation, in their original order. Safe "
        "to run twice: an entry is replayed once.",
    )
    _filters(p)
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    add_common(p)
    p.set_defaults(func=cmd_replay)

    p = actions.add_parser(
        "purge",
        help="drop dead letters",
        description="Drop the matching dead letters (they stay in GROUP.dlq as purged).",
    )
    _filters(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_common(p)
    p.set_defaults(func=cmd_purge)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("group", metavar="GROUP", help="the consumer group, e.g. email")
    p.add_argument("--type", action="append", metavar="T", help="only this event type")
    p.add_argument(
        "--error-type",
        action="append",
        metavar="E",
        help="only this error type, e.g. TimeoutError or smtplib.SMTPException",
    )
    p.add_argument("--since", metavar="TIME", help=f"dead-lettered at or after: {_TIME}")
    p.add_argument("--until", metavar="TIME", help=f"dead-lettered at or before: {_TIME}")
    p.add_argument("--id", action="append", metavar="ID", help="only this entry or event id")


_TIME = "ISO-8601 (e.g. 2026-11-22T10:00:00Z) or an age (30s, 10m, 2h, 1d)"


def _where(args: argparse.Namespace) -> Filter:
    return admin.dead_letter_filter(
        datetime.now(UTC),
        types=args.type or (),
        error_types=args.error_type or (),
        ids=args.id or (),
        since=args.since,
        until=args.until,
    )


def _when(ts: float) -> str:
    return utc_text(datetime.fromtimestamp(ts, UTC))


async def cmd_list(args: argparse.Namespace) -> int:
    where = _where(args)
    async with opened(args.url) as app:
        log = await dead_letters.open_log(
            app.transport, args.group, resolved=args.all, values=False
        )
    rows = log.listing(where, include_resolved=args.all)
    if args.json:
        print_json([e.summary(s) for e, s in rows])
        return 0
    if not rows:
        print(f"no dead letters in group {args.group} match")
        return 0
    print(
        table(
            ("ENTRY", "DEAD AT", "STATE", "REASON", "TYPE", "EVENT", "KEY", "FROM", "ERROR"),
            [
                (
                    e.entry,
                    _when(e.dead_at),
                    s,
                    e.reason,
                    e.type,
                    e.event_id,
                    e.key,
                    f"{e.topic}[{e.partition}]@{e.offset}",
                    _short(f"{e.error_type}: {e.error_message}"),
                )
                for e, s in rows
            ],
        )
    )
    print(f"{log.depth()} dead letter(s) waiting in group {args.group}")
    return 0


def _short(text: str) -> str:
    return clip(text.replace("\n", " "), 70, "…")


async def cmd_show(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        log = await dead_letters.open_log(app.transport, args.group)
    matches = [
        (e, s) for e, s in log.listing(include_resolved=True) if args.id in (e.entry, e.event_id)
    ]
    if not matches:
        raise TidingsError(
            f"no dead letter {args.id!r} in group {args.group}; see 'tidings dlq list "
            f"{args.group} --all'"
        )
    reveal = shredder_of(args)
    docs = [dead_letters.shown_detail(entry.detail(state), reveal) for entry, state in matches]
    if args.json:
        print_json(docs if len(docs) > 1 else docs[0])
        return 0
    for doc in docs:
        _print_doc(doc)
    return 0


def _print_doc(doc: dict[str, Any]) -> None:
    for name in (
        "entry", "state", "reason", "group", "handler", "type", "event_id",
        "correlationid", "key", "topic", "partition", "offset", "attempts",
        "error_type", "error_message", "parked_behind", "replay_of",
    ):  # fmt: skip
        print(f"{name + ':':16}{cell(doc[name])}")
    for name in ("first_failure", "last_failure", "dead_at"):
        print(f"{name + ':':16}{_when(doc[name])}")
    kept = len(base64.b64decode(doc["value"]))
    if doc["truncated"]:
        print(
            f"{'truncated:':16}yes: {kept:,} of the original's {doc['value_size']:,} bytes "
            f"kept (sha256 {doc['value_sha256']}); it cannot be replayed"
        )
    if doc["traceback"]:
        print("traceback:\n" + doc["traceback"].rstrip())
    if doc["event"] is not None:
        print("event:\n" + orjson.dumps(doc["event"], option=orjson.OPT_INDENT_2).decode())
    elif doc["truncated"]:
        print(f"original bytes (the first {kept:,}):")
        print(doc["value_text"])
    else:
        print(f"original bytes ({kept}):")
        print(doc["value_text"])
    print()


def _progress(done: int, total: int) -> None:
    progress("replaying", done, total)


async def cmd_replay(args: argparse.Namespace) -> int:
    where = _where(args)
    async with opened(args.url) as app:
        log = await dead_letters.open_log(app.transport, args.group, resolved=False, values=False)
        chosen, cut = dead_letters.replay_plan(log, where)
        if args.dry_run:
            if args.json:
                print_json([e.summary("dead") for e in chosen])
            else:
                for e in chosen:
                    print(f"would replay {e.entry} {e.type} {e.event_id}")
                print(f"{len(chosen)} dead letter(s) would be replayed to group {args.group}")
                _print_skipped(cut)
            return 0
        show = _progress if len(chosen) >= PROGRESS_FROM and not args.json else None
        count = await dead_letters.replay(app.transport, args.group, where, progress=show)
    if args.json:
        print_json({"group": args.group, "replayed": count, "skipped_truncated": len(cut)})
    else:
        print(
            f"replayed {count} dead letter(s) to group {args.group} "
            f"(through {dead_letters.retry_topic(args.group)})"
        )
        _print_skipped(cut)
    return 0


def _print_skipped(cut: list[DeadLetter]) -> None:
    if cut:
        print(
            f"skipped {len(cut)} truncated dead letter(s): their original was too large to "
            f"keep in full, so it cannot be sent again (see 'tidings dlq show'): "
            + ", ".join(e.entry for e in cut[:5])
            + (", ..." if len(cut) > 5 else "")
        )


async def cmd_purge(args: argparse.Namespace) -> int:
    where = _where(args)
    async with opened(args.url) as app:
        log = await dead_letters.open_log(app.transport, args.group, resolved=False, values=False)
        count = len(log.matching(where))
        if count == 0:
            print(f"no dead letters in group {args.group} match; nothing purged")
            return 0
        if not args.yes:
            yes = confirm(
                f"purge {count} dead letter(s) of group {args.group}? They cannot be replayed "
                "afterwards."
            )
            if not yes:
                print("nothing purged" + ("" if yes is False else " (no answer; pass --yes)"))
                return 1
        purged = await dead_letters.purge(app.transport, args.group, where)
    if args.json:
        print_json({"group": args.group, "purged": purged})
    else:
        print(f"purged {purged} dead letter(s) of group {args.group}")
    return 0
