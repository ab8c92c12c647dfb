"""The ``tidings`` command: a thin shell over library functions.

Every command takes ``--url`` (default ``$TIDINGS_URL``, then
``sqlite:///./tidings.db``) and ``--json`` for machine output. Errors print one line
and exit non-zero: 2 for bad usage, 1 for a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tidings.app import DEFAULT_URL, Tidings, default_url
from tidings.errors import ConfigError, TidingsError

__all__ = ["main"]

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad usage: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: say what was wrong and where to look.
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=None, help=f"transport URL (default: $TIDINGS_URL, else {DEFAULT_URL})"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


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


async def cmd_run(args: argparse.Namespace) -> int:
    from tidings.worker import Worker, tune_gc

    if args.url:
        os.environ["TIDINGS_URL"] = args.url  # before the app's module is imported
    app = load_app(args.app)
    if args.url_given and app.url != args.url:
        raise UsageError(
            f"{args.app} was built with the URL {app.url!r}, so --url {args.url!r} cannot "
            "apply; build it with Tidings(service=...) (the URL then comes from --url or "
            "$TIDINGS_URL), or drop --url"
        )
    worker = Worker(
        app,
        args.group or None,
        max_in_flight=args.max_in_flight,
        shutdown_timeout=args.shutdown_timeout,
    )
    stop = asyncio.Event()
    async with app:
        tune_gc()  # this process is the worker's
        worker.install_signal_handlers(stop)
        logging.getLogger("tidings").info(
            "running group(s) %s of %s on %s", ", ".join(worker.groups), args.app, app.url
        )
        await worker.run(stop)
    log = logging.getLogger("tidings")
    log.info(
        "stopped: %d handled, %d failed attempts",
        worker.stats.handled,
        worker.stats.failed_attempts,
    )
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


Command = Callable[[argparse.Namespace], Any]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tidings", description="Operate a tidings event log.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

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
    _common(p)
    p.set_defaults(func=cmd_run)

    from tidings.cli import _admin, dlq, outbox

    _admin.add_commands(sub, _common)
    dlq.add_commands(sub, _common)
    outbox.add_commands(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("TIDINGS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.url_given = getattr(args, "url", None) is not None
        if getattr(args, "url", None) is None:
            args.url = default_url()
        func: Command = args.func
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except UsageError as exc:
        print(f"tidings: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except ConfigError as exc:
        print(f"tidings: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except TidingsError as exc:
        print(f"tidings: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
