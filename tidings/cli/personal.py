"""``tidings erase SUBJECT`` (decision 0036); the ``--reveal``/``--keys`` options of
the commands that show events are ``common``'s."""

from __future__ import annotations

import argparse
from typing import Any

from tidings.app import default_url
from tidings.cli.common import KEYS_HELP, add_common, opened, shredder
from tidings.cli.output import print_json

__all__ = ["add_commands"]

_ERASE_HELP = """\
Erase SUBJECT's personal data: delete its data key from the key store (durably, and
recorded there), so every copy of its encrypted fields, in the log, on replay, in dead
letters and in outboxes, reads as "[erased]"; then append a tidings.subject_erased
event (the key id, never the subject) to _tidings.erasures. Other processes see the
erasure within their key cache's lifetime (30 s by default).
"""


def add_commands(sub: Any) -> None:
    """Register ``erase`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "erase",
        help="erase a data subject's personal data (crypto-shredding)",
        description=_ERASE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("subject", metavar="SUBJECT", help="the subject's id, e.g. a user id")
    p.add_argument("--keys", metavar="URL", help=KEYS_HELP)
    add_common(p)
    p.set_defaults(func=cmd_erase)


async def cmd_erase(args: argparse.Namespace) -> int:
    keys = shredder(args)
    async with opened(args.url or default_url()) as app:  # a mistyped path: an error
        app.shredder = keys
        kid = await app.erase(args.subject)
    if args.json:
        print_json({"erased": kid is not None, "kid": kid})
    elif kid is None:
        print("no key for that subject: nothing of it is encrypted in this key store")
    else:
        print(f"erased key {kid}; its fields now read as [erased]")
    return 0
