"""``tidings run MODULE:APP``: run an app's subscribers, a worker, until SIGTERM.

Argument parsing, the app's import and the process's exit only; the worker is
:meth:`tidings.worker.Worker.serve`, which a program calls to run a worker in-process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from tidings.app import Tidings
from tidings.cli.common import UsageError, add_common
from tidings.errors import ConfigError
from tidings.worker import Worker

__all__ = ["add_commands", "app_of", "load_app"]


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
    add_common(p)
    p.set_defaults(func=cmd_run)


def load_app(spec: str) -> Tidings:
    """Import ``module:attribute`` and return the Tidings app it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected module:app, e.g. myservice.events:app, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, Tidings):
        raise ConfigError(f"{spec} is {type(app).__name__}, not a tidings.Tidings app")
    return app


def app_of(args: argparse.Namespace) -> Tidings:
    """The app ``args.app`` names, on ``--url`` if given (``$TIDINGS_URL`` is set to it
    before the app's module is imported); a usage error if the app has a URL of its own."""
    if args.url:
        os.environ["TIDINGS_URL"] = args.url  # before the app's module is imported
    app = load_app(args.app)
    if args.url_given and app.url != args.url:
        raise UsageError(
            f"{args.app} was built with the URL {app.url!r}, so --url {args.url!r} cannot "
            "apply; build it with Tidings(service=...) (the URL then comes from --url or "
            "$TIDINGS_URL), or drop --url"
        )
    return app


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
