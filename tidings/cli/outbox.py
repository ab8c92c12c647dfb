"""``tidings outbox relay|status``: run an outbox relay alone, or look at its backlog.

Argument parsing and printing only; the work is in :mod:`tidings.outbox`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from tidings.app import Tidings
from tidings.cli.common import add_common, positive_float, positive_int
from tidings.cli.output import print_json, utc_text
from tidings.outbox import DEFAULT_TABLE, Outbox, OutboxStatus

__all__ = ["RELAY_SERVICE", "add_commands"]

# The relay appends events that were encoded, source included, when they were added;
# this name is the source of nothing, it only names the app the relay opens.
RELAY_SERVICE = "tidings-outbox-relay"

log = logging.getLogger("tidings.outbox")

_RELAY_HELP = """\
Move the events committed to an outbox table (in the database --db) to the log
(--url), until SIGINT or SIGTERM. Events are published in commit order per partition
key, at least once (the event id is the dedupe key), and delayed events once due.

One relay per outbox table is active: it holds a lease in the table <TABLE>_lease and
renews it every third of --lease; every renewal changes the row. A second relay
started on the same table stands by and takes over when the first stops (at once: it
releases the lease) or dies (once it has seen the row unchanged for a lease length,
timed by its own monotonic clock: a wall-clock step changes nothing). A relay whose
renewals have failed for two thirds of --lease stops relaying until it holds the
lease again. The tables are created if missing (and a lease table made by an older
tidings gets its new columns).

'tidings run' runs the relays that an app declared (app.add_component(outbox.relay()));
this command is for a relay of its own, e.g. beside a web service that has no worker.
"""

_STATUS_HELP = """\
Print an outbox table's backlog: events pending (due now, and scheduled for later),
how long the oldest due event has waited (how far behind the relay is), the next
scheduled time, and the relay that holds the lease: the time left on it as the holder
wrote it at its last renewal, read by the wall clock (the database server's on
PostgreSQL), and its renewal count. A live holder's count moves between two looks;
standbys judge by that count, not by the wall clock.
"""


def add_commands(sub: Any) -> None:
    """Register ``outbox relay`` and ``outbox status`` on the ``tidings`` sub-parser."""
    raw = argparse.RawDescriptionHelpFormatter
    outbox = sub.add_parser(
        "outbox",
        help="run an outbox relay, or show an outbox's backlog",
        description="Run a transactional outbox's relay, or show its backlog.",
    )
    actions = outbox.add_subparsers(dest="action", metavar="ACTION", parser_class=type(outbox))
    actions.required = True

    p = actions.add_parser(
        "relay",
        help="relay an outbox table's events to the log until stopped",
        description=_RELAY_HELP,
        formatter_class=raw,
    )
    _db_options(p)
    p.add_argument(
        "--batch", type=positive_int, default=500, metavar="N", help="events per pass (500)"
    )
    p.add_argument(
        "--poll-interval",
        type=positive_float,
        default=0.05,
        metavar="S",
        help="seconds between looks at an idle table (0.05)",
    )
    p.add_argument(
        "--lease",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds a stand-by waits, without seeing a renewal, before it takes over (10)",
    )
    add_common(p)
    p.set_defaults(func=cmd_relay)

    p = actions.add_parser(
        "status",
        help="show an outbox table's backlog and its relay",
        description=_STATUS_HELP,
        formatter_class=raw,
    )
    _db_options(p)
    add_common(p)
    p.set_defaults(func=cmd_status)


def _db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="the database of the outbox table, a SQLAlchemy URL, e.g. sqlite:///./app.db "
        "or postgresql+psycopg://user:password@host/app",
    )
    p.add_argument(
        "--table", default=DEFAULT_TABLE, metavar="NAME", help=f"the table ({DEFAULT_TABLE})"
    )


async def cmd_relay(args: argparse.Namespace) -> int:
    app = Tidings(args.url, service=RELAY_SERVICE)
    outbox = Outbox(app, args.db, table=args.table)
    relay = outbox.relay(batch=args.batch, poll_interval=args.poll_interval, lease=args.lease)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("relaying %r to %s as %s", outbox, app.url, relay.holder)
    await relay.run(stop)
    log.info("stopped: %d event(s) relayed", relay.relayed)
    if args.json:
        print_json({"relayed": relay.relayed, "holder": relay.holder}, indent=None)
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    outbox = Outbox(Tidings(args.url, service=RELAY_SERVICE), args.db, table=args.table)
    try:
        status = await outbox.status()
    finally:
        await outbox.dispose()
    if args.json:
        print_json(status.as_json())
    else:
        print(f"outbox {outbox.table.name!r} in {outbox.url}")
        print(_status_text(status))
    return 0


def _status_text(s: OutboxStatus) -> str:
    pending = f"{s.pending} ({s.due} due, {s.scheduled} scheduled"
    if s.next_scheduled is not None:
        pending += f", next at {_when(s)}"
    pending += ")"
    age = s.oldest_age
    oldest = "-" if age is None else f"{_seconds(age)} ago"
    if s.holder is None:
        relay = "none (no relay holds the lease)"
    else:
        left = s.lease_expires_in or 0.0
        count = "" if s.lease_renewals is None else f", renewal {s.lease_renewals}"
        if left > 0:
            relay = f"{s.holder} (lease renewed, {_seconds(left)} left{count})"
        else:
            # Overdue by the wall clock: the holder died or froze, or a clock stepped.
            # Standbys go by the renewal count, which a live holder moves.
            relay = (
                f"{s.holder} (lease overdue by {_seconds(-left)} by the wall clock{count}: "
                "its relay may be dead; a standby takes over once it has seen no renewal "
                "for a lease length)"
            )
    rows = (("pending", pending), ("oldest due", oldest), ("relay", relay))
    return "\n".join(f"{name:<11}{value}" for name, value in rows)


def _when(s: OutboxStatus) -> str:
    assert s.next_scheduled is not None
    return utc_text(s.next_scheduled)


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"
