"""What the commands print, and how: tables, JSON, times, errors, progress, questions.

Every command prints through these, so that the command line has one look: tables with
``-`` for nothing, JSON indented by two, UTC times ending in ``Z``, and one line for an
error (``tidings: error: ...``) or a warning on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

__all__ = [
    "cell",
    "clip",
    "confirm",
    "print_error",
    "print_json",
    "print_warning",
    "progress",
    "table",
    "utc_text",
]


def print_json(value: Any, *, indent: int | None = 2) -> None:
    """Print ``value`` as JSON, indented by two (``indent=None``: on one line)."""
    print(json.dumps(value, indent=indent))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, headers first; ``None`` shows as ``-``."""
    cells = [[str(c) for c in headers], *[[cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def cell(value: object) -> str:
    """A value as a table shows it: ``-`` for ``None``."""
    return "-" if value is None else str(value)


def clip(text: str, width: int, mark: str) -> str:
    """``text``, or its start ending in ``mark`` if it is longer than ``width``."""
    return text if len(text) <= width else text[: width - len(mark)] + mark


def utc_text(when: datetime, timespec: str = "seconds") -> str:
    """ISO-8601 with a ``Z`` for UTC, e.g. ``2026-11-22T10:00:00Z``."""
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def print_error(message: str) -> None:
    """The one line a failing command prints on stderr."""
    print(f"tidings: error: {message}", file=sys.stderr)


def print_warning(message: str) -> None:
    """A line on stderr about something skipped; the command goes on."""
    print(f"tidings: warning: {message}", file=sys.stderr, flush=True)


def progress(verb: str, done: int, total: int) -> None:
    """A bar on stderr, redrawn in place, ended by a newline when ``done`` reaches ``total``."""
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    bar = "#" * filled + "." * (width - filled)
    print(f"\r{verb} [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)


def confirm(question: str) -> bool | None:
    """Ask ``question [y/N]`` on stdout and read the answer from stdin: True for y or
    yes, False for another answer, None for none (an empty line, or no input)."""
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline().strip().lower()
    if not answer:
        return None
    return answer in ("y", "yes")
