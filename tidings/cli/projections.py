"""``tidings projections status|rebuild``: where an app's projections stand, and
rebuilding one while it serves.

Argument parsing and printing only; the work is in :mod:`tidings.projections`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from tidings.cli.common import UsageError, add_common, app_of, positive_int
from tidings.cli.output import print_json, table
from tidings.errors import ConfigError
from tidings.projections import Projection, ProjectionStatus

__all__ = ["add_commands"]

_APP = "module:attribute of the tidings.Tidings app that declares the projections"

_STATUS_HELP = """\
Print each projection of an app (or only NAME): per partition of its topics, the
offset of the last event it applied (its position, stored with its tables), its
group's committed offset, the log's end and the lag; and whether a rebuild runs.
"""

_REBUILD_HELP = """\
Rebuild projection NAME while it serves: its handlers run again, from the start of
its topics, into a shadow (a file beside its SQLite file, or a schema of its own on
PostgreSQL); once the shadow has caught up with the live projection, its tables and
positions are swapped in, in one transaction. Readers see the old tables or the new
ones, never a partial one. Workers may keep running meanwhile. One rebuild of a
projection runs at a time.
"""


def add_commands(sub: Any) -> None:
    """Register ``projections status`` and ``projections rebuild``."""
    raw = argparse.RawDescriptionHelpFormatter
    projections = sub.add_parser(
        "projections",
        help="show an app's projections, or rebuild one",
        description="Show where an app's projections stand, or rebuild one while it serves.",
    )
    actions = projections.add_subparsers(
        dest="action", metavar="ACTION", parser_class=type(projections)
    )
    actions.required = True
    p = actions.add_parser(
        "status", help="positions, lag and rebuilds", description=_STATUS_HELP, formatter_class=raw
    )
    p.add_argument("app", help=_APP)
    p.add_argument("name", nargs="?", help="only this projection")
    add_common(p)
    p.set_defaults(func=cmd_status)
    p = actions.add_parser(
        "rebuild", help="rebuild a projection", description=_REBUILD_HELP, formatter_class=raw
    )
    p.add_argument("app", help=_APP)
    p.add_argument("name", help="the projection")
    p.add_argument(
        "--batch", type=positive_int, default=500, metavar="N", help="events per transaction (500)"
    )
    add_common(p)
    p.set_defaults(func=cmd_rebuild)


def _chosen(args: argparse.Namespace) -> tuple[Any, list[Projection]]:
    app = app_of(args)
    if not app.projections:
        raise ConfigError(f"{args.app} declares no projection (app.projection(...))")
    if args.name is None:
        return app, list(app.projections.values())
    found = app.projections.get(args.name)
    if found is None:
        known = ", ".join(sorted(app.projections))
        raise UsageError(f"{args.app} has no projection {args.name!r}; it has: {known}")
    return app, [found]


async def cmd_status(args: argparse.Namespace) -> int:
    app, chosen = _chosen(args)
    async with app:
        found = [await p.status() for p in chosen]
    for p in chosen:
        p.close()
    if args.json:
        print_json([s.to_json() for s in found])
        return 0
    for s in found:
        print(_status_text(s))
    return 0


def _status_text(s: ProjectionStatus) -> str:
    head = f"projection {s.name} in {s.db}: lag {s.lag}"
    if s.rebuilding is not None:
        age = time.time() - s.rebuilding.heartbeat
        head += f"; rebuilding in {s.rebuilding.owner} (last sign of life {age:.0f} s ago)"
    rows = [
        (p.topic, p.partition, _dash(p.position), _dash(p.committed), p.end, p.lag)
        for p in s.partitions
    ]
    headers = ("TOPIC", "PARTITION", "POSITION", "COMMITTED", "END", "LAG")
    return f"{head}\n{table(headers, rows)}"


def _dash(value: int | None) -> object:
    return "-" if value is None else value


async def cmd_rebuild(args: argparse.Namespace) -> int:
    app, (projection,) = _chosen(args)
    shown = [0.0]

    def progress(applied: int) -> None:
        now = time.monotonic()
        if not args.json and now - shown[0] > 0.5:
            shown[0] = now
            print(
                f"\rrebuilding {projection.name}: {applied} events applied", end="", file=sys.stderr
            )

    async with app:
        try:
            report = await projection.rebuild(batch=args.batch, progress=progress)
        finally:
            projection.close()
    if args.json:
        print_json(report.to_json())
        return 0
    if shown[0]:
        print(file=sys.stderr)
    print(
        f"projection {report.name} rebuilt: {report.applied} events applied "
        f"({report.failed} failed, {report.undecodable} undecodable) in {report.rounds} "
        f"round(s), {report.seconds:.1f} s; swapped in"
    )
    return 0
