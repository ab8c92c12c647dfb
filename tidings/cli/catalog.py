"""``tidings catalog [MODULE:APP]``: the event catalog, as text, JSON or a static site.

A shell over :mod:`tidings.catalog`: the app's import, the log, and printing only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tidings.app import Tidings
from tidings.catalog import DEFAULT_SCAN, build_catalog, catalog_json, render_text, write_html
from tidings.cli.common import UsageError, add_common, load_app, opened
from tidings.cli.output import print_json

__all__ = ["add_commands"]

_HELP = """\
Every event type of the log: its versions (schemas, the changes between them,
deprecation and sunset), description, owner, producers, consumers (groups, the
versions they read, their SLA), topics, partition key and an example payload, and the
flows between types that the causation of the newest events shows. Built from the
schema registry (what each service recorded when it started), APP's own declarations
if given, and the newest --scan events of each topic.
"""


def add_commands(sub: Any) -> None:
    """Register ``catalog`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "catalog",
        help="the event catalog: types, versions, producers, consumers, flows",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "app", nargs="?", help="module:attribute of a tidings.Tidings app (its log by default)"
    )
    p.add_argument(
        "--html", type=Path, metavar="DIR", help="write a static site into DIR (no server needed)"
    )
    p.add_argument(
        "--scan", type=_count, default=DEFAULT_SCAN, metavar="N",
        help=f"events read per topic, the newest (default {DEFAULT_SCAN}; 0: none)",
    )  # fmt: skip
    add_common(p)
    p.set_defaults(func=cmd_catalog)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


async def cmd_catalog(args: argparse.Namespace) -> int:
    target: Tidings | None = None
    if args.app is not None:
        if args.url_given:
            os.environ["TIDINGS_URL"] = args.url  # before the app's module is imported
        target = load_app(args.app)
    where = target.url if target is not None and not args.url_given else args.url
    async with opened(where) as log:
        catalog = await build_catalog(log.transport, app=target, scan_limit=args.scan)
    if args.html is not None:
        try:
            written = write_html(catalog, args.html)
        except OSError as exc:
            raise UsageError(f"cannot write {args.html}: {exc.strerror or exc}") from None
        if args.json:
            print_json({"written": [str(p) for p in written]})
        else:
            print(f"wrote {len(written)} page(s) to {args.html} (open {args.html / 'index.html'})")
        return 0
    if args.json:
        print_json(catalog_json(catalog))
    else:
        print(render_text(catalog))
    return 0
