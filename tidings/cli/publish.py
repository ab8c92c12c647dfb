"""``tidings publish TOPIC [TYPE --data JSON]``: publish one event, or JSON lines from
stdin.

Argument parsing and printing only; the events are built, checked and published by
:mod:`tidings.admin`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings import admin
from tidings.cli.common import add_common, opened, positive_int
from tidings.cli.output import print_json, print_warning
from tidings.errors import ConfigError

__all__ = ["add_commands"]

_PUBLISH_HELP = """\
Publish one event (TOPIC TYPE --data JSON), or, with neither TYPE nor --data, a batch
of events read from stdin, one JSON object per line. A line is either

  {"type": "task.created", "data": {...}, "subject": "t-1", "correlationid": "r-9"}

(subject, correlationid and dataversion optional; --subject, --correlation-id and
--version are their defaults), published with source "tidings-cli"; or a full
CloudEvents structured-mode event (it has "specversion"), published as it is, id,
source and time included, so that 'tidings tail --json' output can be published
again. Blank lines are skipped. Every line is checked before any is published: a bad
line publishes nothing. The topic must exist, unless --create is given.

Each payload is checked against the schema its type has in the log's schema registry
(the version given, else the latest); one that does not match is refused with every
failing path (data.amount_cents: "x" is not of type "integer"). The event's
dataversion is the version checked, and its subject (the partition key) is the
payload's subject field, if the type has one and no subject is given; a different
subject is refused. A type the registry does not know is published unchecked, with a
warning (--strict refuses it); --no-check skips the registry. An event given whole is
checked against its own dataversion and published as it is.

Prints the id of each published event, one a line (--json: a list of objects with
id, type, subject and dataversion).
"""


def add_commands(sub: Any) -> None:
    """Register ``publish`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "publish",
        help="publish an event, or JSON lines from stdin",
        description=_PUBLISH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topic", metavar="TOPIC", help="the topic, e.g. task-events")
    p.add_argument("type", nargs="?", metavar="TYPE", help="the event type, e.g. task.created")
    p.add_argument(
        "--data", metavar="JSON", help="the payload as JSON (needs TYPE); 'null' for none"
    )
    p.add_argument(
        "--subject",
        metavar="S",
        help="the event's subject and partition key (default: the payload's subject field, "
        "if its registered type has one)",
    )
    p.add_argument(
        "--correlation-id", metavar="C", help="the correlation id (default: the event's id)"
    )
    p.add_argument(
        "--version",
        type=positive_int,
        metavar="N",
        help="the payload's schema version (its dataversion; default: the latest registered)",
    )
    check = p.add_mutually_exclusive_group()
    check.add_argument(
        "--strict",
        action="store_true",
        help="refuse a type the log's schema registry does not know (default: a warning)",
    )
    check.add_argument(
        "--no-check",
        action="store_true",
        help="do not check payloads against the log's schema registry",
    )
    p.add_argument("--create", action="store_true", help="create the topic if it is missing")
    p.add_argument(
        "--delay",
        metavar="AGE",
        help="deliver no earlier than this from now (30s, 10m, 2h, 1d): the events wait in "
        "the scheduler table until a worker's relay appends them",
    )
    add_common(p)
    p.set_defaults(func=cmd_publish)


async def cmd_publish(args: argparse.Namespace) -> int:
    _check_type_and_data(args)
    deliver_at = datetime.now(UTC) + admin.parse_age(args.delay) if args.delay else None
    data = None if args.data is None else _parse_data(args.data)
    async with opened(args.url, create=args.create) as app:
        await admin.check_publish_topic(app.transport, args.topic, create=args.create)
        check = None
        if not args.no_check:
            check = await admin.publish_check(app, strict=args.strict)
        if args.type is not None:
            events = [
                admin.build_event(
                    app,
                    args.type,
                    data,
                    subject=args.subject,
                    correlation_id=args.correlation_id,
                    version=args.version,
                    check=check,
                )
            ]
        else:
            if sys.stdin.isatty():
                print(
                    "reading events from stdin, one JSON object per line; end with Ctrl-D",
                    file=sys.stderr,
                )
            events = admin.parse_publish_lines(
                sys.stdin.buffer,
                app,
                subject=args.subject,
                correlation_id=args.correlation_id,
                version=args.version,
                check=check,
            )
        for warning in check.warnings if check is not None else ():
            print_warning(warning)  # every event was checked: the batch goes
        await admin.publish(app, args.topic, events, create=args.create, deliver_at=deliver_at)
    if args.json:
        print_json(
            [
                {"id": e.id, "type": e.type, "subject": e.subject, "dataversion": e.dataversion}
                for e in events
            ]
        )
    else:
        for event in events:
            print(event.id)
    return 0


def _check_type_and_data(args: argparse.Namespace) -> None:
    if args.type is None and args.data is not None:
        raise ConfigError("--data needs TYPE: tidings publish TOPIC TYPE --data JSON")
    if args.type is not None and args.data is None:
        raise ConfigError(
            "TYPE needs --data JSON (--data null for none); or give neither and write "
            "events to stdin, one JSON object per line"
        )


def _parse_data(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f"--data is not valid JSON ({exc.msg} at column {exc.colno}); "
            """e.g. --data '{"id": 1}'"""
        ) from None
