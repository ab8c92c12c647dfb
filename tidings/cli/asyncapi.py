"""``tidings asyncapi MODULE:APP``: the app's AsyncAPI 3.0 document, as JSON.

A shell over :func:`tidings.asyncapi.document`: the app's import, the file and the
summary line only. JSON only (YAML would need a dependency; a YAML 1.2 reader reads
JSON as it is).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tidings.asyncapi import document
from tidings.cli.common import UsageError, add_common, app_of

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``asyncapi`` on the ``tidings`` sub-parser."""
    p = sub.add_parser("asyncapi", help="write an app's AsyncAPI 3.0 document (JSON)")
    p.add_argument("app", help="module:attribute of a tidings.Tidings app")
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE, not stdout")
    p.add_argument(
        "--api-version", default="1.0.0", help="the document's info.version (default 1.0.0)"
    )
    add_common(p)
    p.set_defaults(func=cmd_asyncapi)


def cmd_asyncapi(args: argparse.Namespace) -> int:
    doc = document(app_of(args), version=args.api_version)
    text = json.dumps(doc, indent=2) + "\n"
    if args.output is None:
        print(text, end="")
        return 0
    try:
        Path(args.output).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(
        f"wrote {args.output}: {len(doc['channels'])} channel(s), "
        f"{len(doc['operations'])} operation(s), {len(doc['components']['messages'])} message(s)"
    )
    return 0
