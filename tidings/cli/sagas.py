"""``tidings sagas list|show``: the saga instances in a database, and one key's state,
data, history and pending deadlines.

Argument parsing and printing only; the work is in :mod:`tidings.sagas`.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from tidings.cli.common import UsageError, add_common, load_app, positive_int
from tidings.cli.output import print_json, table, utc_text
from tidings.sagas import DEFAULT_PREFIX, SagaInfo, list_sagas, saga_databases, show_saga

__all__ = ["add_commands", "saga_json"]

STATUSES = ("active", "finished", "failed")


def add_commands(sub: Any) -> None:
    """Register ``sagas list`` and ``sagas show`` on the ``tidings`` sub-parser."""
    sagas = sub.add_parser(
        "sagas",
        help="list saga instances, or show one key's state and history",
        description="Look at the sagas (process managers) kept in a service's database.",
    )
    actions = sagas.add_subparsers(dest="action", metavar="ACTION", parser_class=type(sagas))
    actions.required = True
    p = actions.add_parser(
        "list",
        help="list saga instances: name, key, state, status, version, last change",
        description="List saga instances, the latest changed first.",
    )
    _db_options(p)
    p.add_argument("--status", choices=STATUSES, help="only instances with this status")
    p.add_argument("--limit", type=positive_int, default=1000, metavar="N", help="at most N (1000)")
    add_common(p)
    p.set_defaults(func=cmd_list)
    p = actions.add_parser(
        "show",
        help="one key's instances: state, data, history, pending deadlines, parked events",
        description="Show the saga instances of one business key (one per saga).",
    )
    p.add_argument("key", metavar="KEY", help="the business key, e.g. a task id")
    _db_options(p)
    add_common(p)
    p.set_defaults(func=cmd_show)


def _db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="the sagas' database, a SQLAlchemy URL (sqlite:///./app.db, "
        "postgresql+psycopg://...); or give --app",
    )
    p.add_argument("--app", metavar="MODULE:APP", help="the app whose sagas to read (their --db)")
    p.add_argument("--name", metavar="SAGA", help="only the saga of this name")
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"the tables' prefix ({DEFAULT_PREFIX})"
    )


def _databases(args: argparse.Namespace) -> list[Any]:
    """The databases to read: --db, or those of the sagas of --app."""
    if (args.db is None) == (args.app is None):
        raise UsageError("give the sagas' database as --db URL, or the app as --app MODULE:APP")
    if args.db is not None:
        return [args.db]
    found = saga_databases(load_app(args.app), args.name)
    if not found:
        which = f" named {args.name!r}" if args.name else ""
        raise UsageError(f"{args.app} has no saga{which}")
    return list(found)


def cmd_list(args: argparse.Namespace) -> int:
    found: list[SagaInfo] = []
    for db in _databases(args):
        found += list_sagas(
            db, name=args.name, status=args.status, limit=args.limit, prefix=args.prefix
        )
    if args.json:
        print_json([saga_json(i) for i in found])
        return 0
    rows = [(i.name, i.key, i.state, i.status, i.version, utc_text(i.updated_at)) for i in found]
    print(table(["SAGA", "KEY", "STATE", "STATUS", "VERSION", "UPDATED"], rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    found: list[SagaInfo] = []
    for db in _databases(args):
        found += show_saga(db, args.key, name=args.name, prefix=args.prefix)
    if args.json:
        print_json([saga_json(i) for i in found])
        return 0 if found else 1
    if not found:
        print(f"no saga instance for key {args.key!r}")
        return 1
    print("\n\n".join(_text(i) for i in found))
    return 0


def _text(i: SagaInfo) -> str:
    lines = [
        f"saga     {i.name}",
        f"key      {i.key}",
        f"state    {i.state} ({i.status}, version {i.version})",
        f"data     {json.dumps(i.data, sort_keys=True)}",
        f"started  {utc_text(i.started_at)}",
        f"updated  {utc_text(i.updated_at)}",
        "",
        "history:",
    ]
    rows = [
        (utc_text(h["at"]), h["type"], h["from_state"], h["to_state"], h["note"], h["event_id"])
        for h in i.history
    ]
    lines.append(_indent(table(["AT", "EVENT", "FROM", "TO", "WHAT", "EVENT ID"], rows)))
    if i.deadlines:
        lines += ["", "pending deadlines:"]
        due = [(d["deadline"], utc_text(d["due_at"]), d["id"]) for d in i.deadlines]
        lines.append(_indent(table(["DEADLINE", "DUE", "ID"], due)))
    if i.parked:
        lines += ["", "parked events (applied once the saga starts):"]
        parked = [(utc_text(p["at"]), p["type"], p["event_id"]) for p in i.parked]
        lines.append(_indent(table(["AT", "EVENT", "EVENT ID"], parked)))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def saga_json(i: SagaInfo) -> dict[str, Any]:
    """An instance as JSON: times as UTC text."""

    def clean(row: dict[str, Any]) -> dict[str, Any]:
        return {k: utc_text(v) if isinstance(v, datetime) else v for k, v in row.items()}

    return {
        "name": i.name, "key": i.key, "state": i.state, "status": i.status,
        "version": i.version, "data": i.data, "started_at": utc_text(i.started_at),
        "updated_at": utc_text(i.updated_at), "history": [clean(h) for h in i.history],
        "deadlines": [clean(d) for d in i.deadlines], "parked": [clean(p) for p in i.parked],
    }  # fmt: skip
