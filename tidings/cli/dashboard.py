"""``tidings dashboard``: the operator dashboard in a browser (:mod:`tidings.dashboard`).

Argument parsing, the address check and the server only; the pages are the
dashboard's, over the same library the other commands call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from typing import Any

from tidings.app import DEFAULT_URL
from tidings.cli.common import add_reveal, app_of, opened, shredder_of
from tidings.dashboard import DEFAULT_HOST, DEFAULT_PORT, app, check_bind
from tidings.errors import ConfigError

__all__ = ["add_commands"]

TOKEN_ENV = "TIDINGS_DASHBOARD_TOKEN"

_HELP = f"""\
Serve the operator dashboard: groups and their lag, dead letters (list, replay,
purge), events, traces and the event catalog, for the log at --url; the sagas in
the databases of --sagas-db, and the sagas and projections of the app of --app.

It listens on {DEFAULT_HOST} by default. Any other address needs a token (--token,
or ${TOKEN_ENV}: every request must carry it) or --read-only (no action at all).
Every replay, purge and offset reset is a confirmed form post, recorded as an event
on the topic _tidings.admin. Personal fields are masked; --reveal lets a page show
them in clear (?reveal=1), with the key store of --keys.
"""


def add_commands(sub: Any) -> None:
    """Register ``dashboard`` on the ``tidings`` sub-parser."""
    p = sub.add_parser(
        "dashboard",
        help="serve the operator dashboard (lag, dead letters, events, traces, catalog)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url", default=None, help=f"transport URL (default: $TIDINGS_URL, else {DEFAULT_URL})"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--token", help=f"the token every request needs (default: ${TOKEN_ENV})")
    mode.add_argument("--read-only", action="store_true", help="show, never change anything")
    p.add_argument("--outbox-db", metavar="URL", help="also show this outbox table's backlog")
    p.add_argument("--outbox-table", metavar="NAME", help="the outbox table (tidings_outbox)")
    p.add_argument(
        "--sagas-db",
        metavar="URL",
        action="append",
        default=[],
        help="show the sagas in this database, as tidings sagas --db takes it (repeatable)",
    )
    p.add_argument("--app", metavar="MODULE:APP", help="show the sagas and projections of this app")
    add_reveal(p)
    p.set_defaults(func=cmd_dashboard)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def cmd_dashboard(args: argparse.Namespace) -> int:
    token = args.token or (None if args.read_only else os.environ.get(TOKEN_ENV) or None)
    check_bind(args.host, token=token, read_only=args.read_only)
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(
            "the dashboard needs its extra: pip install 'tidings[dashboard]'"
        ) from None
    asgi = app(
        args.url, token=token, read_only=args.read_only, shredder=shredder_of(args),
        outbox_db=args.outbox_db, outbox_table=args.outbox_table,
        sagas_db=args.sagas_db, service=None if args.app is None else app_of(args),
    )  # fmt: skip
    asyncio.run(_check_log(args.url))  # a mistyped path: an error now, not on every page
    # Bound here, so that --port 0 prints the port the system chose.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((args.host, args.port))
    except OSError as exc:
        listening.close()
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    port = listening.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    mode = "read-only" if args.read_only else "token required" if token else "local only"
    print(f"tidings dashboard: http://{host}:{port}/ ({mode}; log {args.url})", flush=True)
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning"))
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again against the handlers
    # it found: these make that a clean exit (0), as for every other part of a system.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    with listening:
        server.run(sockets=[listening])
    return 0


async def _check_log(url: str) -> None:
    async with opened(url):
        pass
