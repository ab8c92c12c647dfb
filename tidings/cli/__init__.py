"""The ``tidings`` command: a thin shell over library functions.

Every command takes ``--url`` (default ``$TIDINGS_URL``, then
``sqlite:///./tidings.db``) and ``--json`` for machine output. Errors print one line
and exit non-zero: 2 for bad usage, 1 for a failure.

This module builds the parser and runs the command; each family of commands is a
module of its own (``run``, ``topics``, ``groups``, ``publish``, ``tail``, ``trace``,
``offsets``, ``dlq``, ``outbox``, ``schema``, ``asyncapi``, ``catalog``,
``projections``, ``cancel``, ``erase``,
``sagas``, ``dashboard``) with an
``add_commands(sub)`` that
registers it. What they share is in ``common`` (the parser, usage errors, common
options, the opened log, the ``module:app`` import) and ``output`` (tables, JSON,
times, errors, progress, questions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from tidings import __version__, logs
from tidings.app import default_url
from tidings.cli import (
    asyncapi,
    cancel,
    catalog,
    dashboard,
    dlq,
    groups,
    offsets,
    outbox,
    personal,
    projections,
    publish,
    run,
    sagas,
    schema,
    tail,
    topics,
    trace,
)
from tidings.cli.common import Command, Parser, UsageError
from tidings.cli.output import print_error
from tidings.errors import ConfigError, TidingsError

__all__ = ["build_parser", "main"]

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``tidings`` with every command; ``--help`` lists them in this order."""
    parser = Parser(prog="tidings", description="Operate a tidings event log.")
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for family in (
        run, topics, groups, publish, tail, trace, offsets, dlq, outbox, schema, asyncapi,
        catalog, projections, cancel, sagas, personal, dashboard,
    ):  # fmt: skip
        family.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidings`` command with ``argv`` (default: ``sys.argv[1:]``) and return
    its exit code."""
    parser = build_parser()
    try:
        _check_order(sys.argv[1:] if argv is None else list(argv))
        args = parser.parse_args(argv)
        _configure_logs(args)
        args.url_given = getattr(args, "url", None) is not None
        if getattr(args, "url", None) is None:
            args.url = default_url()
        func: Command = args.func
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        sys.stdout.flush()  # here, where a reader gone away is still ours to handle
        return int(result or 0)
    except BrokenPipeError:
        # The reader went away (e.g. '| head'): stop quietly, and keep Python from
        # complaining when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ConfigError) as exc:
        print_error(str(exc))
        return USAGE_ERROR
    except TidingsError as exc:
        print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _check_order(argv: list[str]) -> None:
    """``tidings --url URL groups`` (as Kafka's tools take it): say where options go,
    rather than argparse's "invalid choice: 'URL'"."""
    option = argv[0].split("=")[0] if argv else ""
    if option in _COMMAND_OPTIONS:
        raise UsageError(
            f"{option} goes after the command: 'tidings COMMAND {option} ...', e.g. "
            f"'tidings groups {option}{' URL' if option == '--url' else ''}' (see 'tidings --help')"
        )


# The options of the commands, which a user may put before the command by habit.
_COMMAND_OPTIONS = {"--url", "--json", "--keys", "--reveal"}


def _configure_logs(args: argparse.Namespace) -> None:
    """Logs to stderr as ``--log-format``/``--log-level`` say (``tidings run``), else
    ``$TIDINGS_LOG_FORMAT``/``$TIDINGS_LOG_LEVEL`` (text, INFO), unless the process
    has set its logging up already (as ``logging.basicConfig`` would leave it)."""
    if logs.set_up_elsewhere():
        return
    logs.configure(
        getattr(args, "log_format", None) or os.environ.get("TIDINGS_LOG_FORMAT", "text"),
        getattr(args, "log_level", None) or os.environ.get("TIDINGS_LOG_LEVEL", "INFO"),
    )
