"""``tidings run MODULE:APP``: run an app's subscribers, a worker, until SIGTERM.

Argument parsing and the process's exit only (the app's import is
:func:`tidings.cli.common.load_app`); the worker is
:meth:`tidings.worker.Worker.serve`, which a program calls to run a worker in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from tidings import logs
from tidings.cli.common import add_common, app_of
from tidings.worker import Worker

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``run`` on the ``tidings`` sub-parser."""
    p = sub.add_parser("run", help="run an app's subscribers (a worker)")
    p.add_argument("app", help="module:attribute of a tidings.Tidings app")
    p.add_argument("--group", action="append", help="run only this group (repeatable)")
    p.add_argument("--max-in-flight", type=int, default=1000, help="events in flight per group")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds to let handlers finish on SIGTERM",
    )
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        help="log lines as text (the default, or $TIDINGS_LOG_FORMAT) or one JSON object "
        "per line; both carry the handled event's group, topic, partition, offset, "
        "event and correlation ids",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="the lowest level logged (default INFO, or $TIDINGS_LOG_LEVEL)",
    )
    add_common(p)
    p.set_defaults(func=cmd_run)


async def cmd_run(args: argparse.Namespace) -> int:
    app = app_of(args)
    worker = Worker(
        app,
        args.group or None,
        max_in_flight=args.max_in_flight,
        shutdown_timeout=args.shutdown_timeout,
    )
    # This process is the worker's: its collector is set up for one (tune_gc), and
    # SIGTERM/SIGINT stop it.
    await worker.serve(tune_gc=True)
    log = logging.getLogger("tidings")
    if worker.stats.abandoned:
        log.error(
            "%d handler(s) did not finish within --shutdown-timeout %.0fs; their events "
            "stay uncommitted and will be handled again",
            worker.stats.abandoned,
            args.shutdown_timeout,
        )
        # A synchronous handler stuck in its thread would keep the interpreter from
        # exiting (it joins executor threads): the offsets are committed, leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return 0
