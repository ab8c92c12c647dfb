"""``tidings run MODULE:APP``: run an app's subscribers, a worker, until SIGTERM.

Argument parsing and the process's exit only (the app's import is
:func:`tidings.cli.common.load_app`); the worker is
:meth:`tidings.worker.Worker.serve`, which a program calls to run a worker in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from tidings import logs
from tidings.cli.common import add_common, app_of
from tidings.errors import ConfigError
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
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port, "
        "logged); needs pip install 'tidings[metrics]'",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address the metrics are served on (default 127.0.0.1)",
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
    server = await _serve_metrics(worker, args) if args.metrics_port is not None else None
    try:
        # This process is the worker's: its collector is set up for one (tune_gc), and
        # SIGTERM/SIGINT stop it.
        await worker.serve(tune_gc=True)
    finally:
        if server is not None:
            server.close()
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


async def _serve_metrics(worker: Worker, args: argparse.Namespace) -> asyncio.Server:
    """``--metrics-port``: the worker's metrics served on its loop (tidings.metrics,
    imported only here: without the extra, nothing of it is loaded)."""
    try:
        from tidings import metrics
    except ImportError as exc:
        raise ConfigError(f"--metrics-port: {exc}") from None
    try:
        server = await metrics.serve_metrics(
            metrics.WorkerMetrics(worker), args.metrics_host, args.metrics_port
        )
    except (OSError, OverflowError) as exc:  # in use, not an address here, not a port
        raise ConfigError(
            f"--metrics-port: cannot listen on {args.metrics_host}:{args.metrics_port}: {exc}"
        ) from None
    host, port = server.sockets[0].getsockname()[:2]
    logging.getLogger("tidings").info("serving metrics on http://%s:%d/metrics", host, port)
    return server
