"""What the commands share besides printing: the parser, usage errors, the options
every command takes, argument types, the log a command opens, and the app a command
imports (``module:app``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from tidings import admin
from tidings.app import DEFAULT_URL, Tidings, default_url
from tidings.errors import ConfigError
from tidings.transports import open_transport

if TYPE_CHECKING:
    from tidings.shredding import Shredder

__all__ = [
    "KEYS_HELP",
    "POSITION_HELP",
    "Command",
    "Parser",
    "UsageError",
    "add_common",
    "add_reveal",
    "app_of",
    "load_app",
    "opened",
    "positive_float",
    "positive_int",
    "shredder",
    "shredder_of",
]

# What a command is: it takes the parsed arguments and returns the exit code, or a
# coroutine that does.
Command = Callable[[argparse.Namespace], Any]

# What :func:`tidings.admin.parse_position` reads (tail --from, offsets reset --to).
POSITION_HELP = (
    "earliest, latest, or a TIME: ISO-8601 (UTC unless it has an offset), e.g. "
    "2026-11-22T10:00:00Z, or an age: 30s, 10m, 2h, 1d, 1h30m"
)


class UsageError(Exception):
    """Bad usage: exit code 2."""


class Parser(argparse.ArgumentParser):
    """The parser of ``tidings`` and of each of its commands."""

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: say what was wrong and where to look.
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra and not hasattr(parsed, "unrecognized_by"):
            # The innermost command that did not know them: argparse reports them from
            # the top ('tidings --help'), where the reader would not find its options.
            parsed.unrecognized_by = self.prog
        return parsed, extra

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            where = getattr(parsed, "unrecognized_by", self.prog)
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see '{where} --help')")
        return parsed


def add_common(p: argparse.ArgumentParser) -> None:
    """The options every command takes: ``--url`` and ``--json``."""
    p.add_argument(
        "--url", default=None, help=f"transport URL (default: $TIDINGS_URL, else {DEFAULT_URL})"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def positive_int(text: str) -> int:
    """An argument type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argument type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


@contextlib.asynccontextmanager
async def opened(url: str, *, create: bool = False) -> AsyncIterator[Tidings]:
    """The log at ``url``; only a publish that may create topics may create it."""
    transport = open_transport(url, create=create)
    async with Tidings(url, service=admin.CLI_SOURCE, transport=transport) as app:
        yield app


def load_app(spec: str) -> Tidings:
    """Import ``module:attribute`` and return the Tidings app it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected module:app, e.g. myservice.events:app, got {spec!r}")
    if module_name.endswith(".py") or module_name.startswith(".") or "/" in module_name:
        dotted = module_name.removesuffix(".py").strip("./")
        raise UsageError(
            f"expected a module, not a file: {dotted.replace('/', '.')}:{attr} "
            f"(module:app, as uvicorn takes it), got {spec!r}"
        )
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, Tidings):
        apps = [name for name, value in vars(module).items() if isinstance(value, Tidings)]
        found = f"{module_name} has no {attr!r}" if app is None else (
            f"{spec} is {type(app).__name__}, not a tidings.Tidings app"
        )  # fmt: skip
        raise ConfigError(f"{found}; its apps: {', '.join(apps) or 'none'}")
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


KEYS_HELP = (
    "the key store: a SQLAlchemy URL (default: $TIDINGS_KEYS_URL, else the SQLite log's "
    "own file); its master key from $TIDINGS_MASTER_KEY or $TIDINGS_MASTER_KEY_FILE"
)


def add_reveal(p: argparse.ArgumentParser) -> None:
    """``--reveal`` and ``--keys`` on a command that shows events."""
    p.add_argument(
        "--reveal",
        action="store_true",
        help="show personal fields in clear (needs the key store and its master key)",
    )
    p.add_argument("--keys", metavar="URL", help=KEYS_HELP)


def shredder_of(args: argparse.Namespace) -> Shredder | None:
    """The key store to reveal with, if ``--reveal`` was given."""
    if not getattr(args, "reveal", False):
        return None
    return shredder(args)


def shredder(args: argparse.Namespace) -> Shredder:
    """The key store of ``--keys`` (or its defaults), with its master key (an error
    now if there is none)."""
    from tidings.shredding.erasure import shredder_for
    from tidings.shredding.keystore import master_key_from

    master_key_from()  # no key store is opened, let alone made, without its master key
    url = args.url or default_url()
    keys = args.keys or os.environ.get("TIDINGS_KEYS_URL")
    if keys is None and not url.startswith("sqlite://"):
        raise UsageError(
            f"the log {url.partition('://')[0]}://... keeps no keys: give the key store "
            "with --keys URL or $TIDINGS_KEYS_URL (a SQLAlchemy URL, e.g. "
            "postgresql://... or sqlite:///keys.db)"
        )
    found = shredder_for(keys or True, url)
    assert found is not None
    return found
