"""``tidings erase SUBJECT`` and the ``--reveal``/``--keys`` options of the commands
that show events (``tail``, ``dlq show``): personal fields are masked unless an
operator who holds the key store asks to see them (decision 0036)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tidings.app import default_url
from tidings.cli.common import add_common, opened
from tidings.cli.output import print_json
from tidings.shredding import Shredder
from tidings.shredding.erasure import shredder_for

__all__ = ["add_commands", "add_reveal", "shredder_of"]

_KEYS_HELP = (
    "the key store: a SQLAlchemy URL (default: $TIDINGS_KEYS_URL, else the SQLite log's "
    "own file); its master key from $TIDINGS_MASTER_KEY or $TIDINGS_MASTER_KEY_FILE"
)

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
    p.add_argument("--keys", metavar="URL", help=_KEYS_HELP)
    add_common(p)
    p.set_defaults(func=cmd_erase)


def add_reveal(p: argparse.ArgumentParser) -> None:
    """``--reveal`` and ``--keys`` on a command that shows events."""
    p.add_argument(
        "--reveal",
        action="store_true",
        help="show personal fields in clear (needs the key store and its master key)",
    )
    p.add_argument("--keys", metavar="URL", help=_KEYS_HELP)


def shredder_of(args: argparse.Namespace) -> Shredder | None:
    """The key store to reveal with, if ``--reveal`` was given."""
    if not getattr(args, "reveal", False):
        return None
    return _shredder(args)


def _shredder(args: argparse.Namespace) -> Shredder:
    url = args.url or default_url()
    shredder = shredder_for(args.keys or os.environ.get("TIDINGS_KEYS_URL") or True, url)
    assert shredder is not None
    return shredder


async def cmd_erase(args: argparse.Namespace) -> int:
    shredder = _shredder(args)
    async with opened(args.url or default_url(), create=True) as app:
        app.shredder = shredder
        kid = await app.erase(args.subject)
    if args.json:
        print_json({"erased": kid is not None, "kid": kid})
    elif kid is None:
        print("no key for that subject: nothing of it is encrypted in this key store")
    else:
        print(f"erased key {kid}; its fields now read as [erased]")
    return 0
