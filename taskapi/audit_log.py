"""The audit log: every event of the system, one JSON line each, hash-chained per UTC day.

Files ``audit-YYYY-MM-DD.jsonl`` (the UTC day of the event's ``time``) in one folder.
Each line is compact JSON with sorted keys::

    {"audited_at":"2026-11-30T09:00:00.123456Z","event":{...},"n":17,"prev":"<sha256 hex>"}

``event`` is the whole CloudEvent as written (``tidings.encode``), ``n`` counts lines
from 1 in each file and ``prev`` is the SHA-256 of the previous line's bytes (without its
newline), or for line 1 of ``b"taskapi-audit:YYYY-MM-DD"``. An event read at a later
version than it was written (upcast) has ``"read": {"version": 2, "data": {...}}`` too:
the payload as the services read it. Changing, removing, inserting or
reordering a line breaks the chain at or after it: :func:`verify` (``taskapi audit
verify``) finds the first break. The chain cannot show that the *last* lines of a file
were changed or cut off: nothing comes after them.

Days are chained separately because events of a past day keep arriving (a replay, a
producer's late event): the file of a past day can grow after the next day's has begun.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import logging
import os
import re
import sys
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from taskapi.settings import Settings
from tidings import ConfigError, Event, encode

__all__ = ["AuditLog", "AuditLogError", "VerifyReport", "genesis", "verify", "verify_main"]

log = logging.getLogger(__name__)

# Event ids remembered per file for deduplication: the lines whose inbox mark may not be
# committed yet when the process dies (appends finish before their marks commit).
RECENT = 10_000
_MAX_CHAINS = 4  # files whose state (up to RECENT ids each) is kept; others reload
_CHUNK = 1 << 20
_NAME = re.compile(r"audit-(\d{4}-\d{2}-\d{2})\.jsonl")
_KEYS = ("audited_at", "event", "n", "prev")


def genesis(day: str) -> str:
    """The ``prev`` of line 1 in the file of ``day`` (``YYYY-MM-DD``)."""
    return hashlib.sha256(f"taskapi-audit:{day}".encode()).hexdigest()


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _day(event: Event) -> str:
    return event.time.astimezone(UTC).date().isoformat()


class AuditLogError(Exception):
    """An audit file whose chain cannot be continued (its last line is not an audit line)."""


class _Chain:
    """What appending to one file needs: its head, and the ids of its last lines."""

    def __init__(self, day: str, path: Path) -> None:
        self.day = day
        self.path = path
        self.lock = asyncio.Lock()
        self.n = 0
        self.head = genesis(day)
        self.size = -1  # the file's size after our last load or write; -1: not loaded
        self.ids: set[str] = set()
        self.order: deque[str] = deque()

    def remember(self, event_id: str) -> None:
        if event_id in self.ids:
            return
        if len(self.order) >= RECENT:
            self.ids.discard(self.order.popleft())
        self.order.append(event_id)
        self.ids.add(event_id)


class AuditLog:
    """Appends events to the hash-chained files in ``folder``.

    Appends to one file are serialized (an asyncio lock in the process, ``flock`` across
    processes: several workers of the group may share the folder) and each is on disk
    (fsync) when :meth:`append` returns.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._chains: OrderedDict[str, _Chain] = OrderedDict()

    def path_for(self, event: Event) -> Path:
        """The file ``event`` goes to."""
        return self.folder / f"audit-{_day(event)}.jsonl"

    async def append(self, event: Event, *, read: dict[str, Any] | None = None) -> bool:
        """Append ``event`` (and ``read``, what it was read as, if given) to its day's
        file; False (nothing written) if its id is among the file's last :data:`RECENT`
        lines. Raises OSError, or AuditLogError if the file's last line is damaged."""
        doc: dict[str, Any] = {"event": orjson.loads(encode(event))}
        if read is not None:
            doc["read"] = read
        chain = self._chain(_day(event))
        async with chain.lock:
            return await asyncio.to_thread(self._append, chain, event.id, doc)

    def _chain(self, day: str) -> _Chain:
        chain = self._chains.get(day)
        if chain is not None:
            self._chains.move_to_end(day)
            return chain
        chain = self._chains[day] = _Chain(day, self.folder / f"audit-{day}.jsonl")
        # A replay through many days would otherwise keep 10,000 ids of each: forget
        # idle files (reloaded from disk on their next append).
        for old in list(self._chains):
            if len(self._chains) <= _MAX_CHAINS:
                break
            if old != day and not self._chains[old].lock.locked():
                del self._chains[old]
        return chain

    def _append(self, chain: _Chain, event_id: str, doc: dict[str, Any]) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(chain.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            size = os.fstat(fd).st_size
            if size != chain.size:  # first use in this process, or another one wrote
                size = _load(chain, fd, size)
            if event_id in chain.ids:
                return False
            stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            line = orjson.dumps(
                {"n": chain.n + 1, "prev": chain.head, "audited_at": stamp, **doc},
                option=orjson.OPT_SORT_KEYS,
            )
            data = line + b"\n"
            # One write: a crash leaves at most one partial line, cut off on the next load.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{chain.path}: wrote {written} of {len(data)} bytes")
            os.fsync(fd)
            if size == 0:
                _fsync_dir(self.folder)  # a new file's name must survive a crash too
            chain.n += 1
            chain.head = _hash(line)
            chain.size = size + len(data)
            chain.remember(event_id)
            return True
        finally:
            os.close(fd)


def _load(chain: _Chain, fd: int, size: int) -> int:
    """Read the chain's head and recent ids from the file; cut off a partial last line.
    Return the file's size."""
    if size and os.pread(fd, 1, size - 1) != b"\n":
        keep = _last_newline(fd, size) + 1
        log.warning(
            "%s ended with a partial line of %d bytes (a write cut short by a crash): "
            "truncated to its last complete line",
            chain.path,
            size - keep,
        )
        os.ftruncate(fd, keep)
        os.fsync(fd)
        size = keep
    lines = _tail(fd, size, RECENT)
    chain.n, chain.head = 0, genesis(chain.day)
    chain.ids.clear()
    chain.order.clear()
    if lines:
        try:
            n = orjson.loads(lines[-1])["n"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            n = None
        if type(n) is not int:
            raise AuditLogError(
                f"{chain.path}: the last line is not an audit line, its chain cannot be "
                f"continued; see 'taskapi audit verify {chain.path.parent}'"
            )
        chain.n, chain.head = n, _hash(lines[-1])
    for raw in lines:
        try:
            chain.remember(orjson.loads(raw)["event"]["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a damaged line (verify reports it) is no event to deduplicate
    chain.size = size
    return size


def _last_newline(fd: int, size: int) -> int:
    """The offset of the file's last newline, -1 if it has none."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def _tail(fd: int, size: int, count: int) -> list[bytes]:
    """The last ``count`` lines (without newlines) of a file that ends with a newline."""
    chunks: list[bytes] = []
    start = size
    newlines = 0
    while start > 0 and newlines <= count:  # one more newline: the first line is whole
        begin = max(0, start - _CHUNK)
        chunk = os.pread(fd, start - begin, begin)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
        start = begin
    lines = b"".join(reversed(chunks)).split(b"\n")[:-1]
    if start > 0:
        lines = lines[1:]  # begins mid-line
    return lines[-count:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify`: ``ok``, or the first problem with its file and line
    (the line's position in the file, from 1; None for a problem with the file's name).
    ``files`` and ``lines`` count what was read up to there."""

    ok: bool
    files: int
    lines: int
    problem: str | None = None
    file: str | None = None
    line: int | None = None


def verify(folder: Path) -> VerifyReport:
    """Check the chain of every ``audit-*.jsonl`` in ``folder``, in date order; report
    the first problem. Raise ConfigError if there is no audit file in ``folder``."""
    paths = sorted(Path(folder).glob("audit-*.jsonl")) if Path(folder).is_dir() else []
    if not paths:
        raise ConfigError(f"no audit files in {folder}")
    lines = 0
    for files, path in enumerate(paths, 1):
        problem, line, count = _verify_file(path)
        lines += count
        if problem is not None:
            return VerifyReport(False, files, lines, problem, path.name, line)
    return VerifyReport(True, len(paths), lines)


def _verify_file(path: Path) -> tuple[str | None, int | None, int]:
    """(the first problem, its line, how many lines are good before it)."""
    match = _NAME.fullmatch(path.name)
    try:
        day = date.fromisoformat(match[1]).isoformat() if match else ""
    except ValueError:
        day = ""
    if not day:
        return "the name is not audit-YYYY-MM-DD.jsonl with a real date", None, 0
    head = genesis(day)
    number = read = 0
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            read += len(raw)
            if not raw.endswith(b"\n") and path.stat().st_size > read:
                return None, None, number - 1  # an append in progress, not a cut line
            problem = _check(raw, number, head, day)
            if problem is not None:
                return problem, number, number - 1
            head = _hash(raw[:-1])
    return None, None, number


def _check(raw: bytes, number: int, head: str, day: str) -> str | None:
    """The problem with line ``number`` (with its newline), if any."""
    if not raw.endswith(b"\n"):
        return (
            "the last line is cut short (no newline): a write was interrupted; "
            "the next append removes it"
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"line {number} is not valid JSON"
    if not isinstance(doc, dict) or any(key not in doc for key in _KEYS):
        return f"line {number} is not an audit line (it needs the keys {', '.join(_KEYS)})"
    n = doc["n"]
    if type(n) is not int:
        return f"line {number}: n is {n!r}, not a line number"
    if n > number:
        gap = str(number) if n == number + 1 else f"{number}-{n - 1}"
        after = f"follows line {number - 1}" if number > 1 else "is the first line"
        return f"missing line(s) {gap}: line {n} {after} (lines were removed or reordered)"
    if n < number:
        return f"line {n} appears again as line {number} (lines were copied or reordered)"
    if doc["prev"] != head:
        if number == 1:
            return (
                f"line 1 does not start the chain of {day}: the file was renamed, "
                "or its first line changed or replaced"
            )
        return (
            f"line {number} does not match the hash of line {number - 1}: "
            f"line {number - 1} was changed or a line was removed"
        )
    when = doc["event"].get("time") if isinstance(doc["event"], dict) else None
    try:
        on = datetime.fromisoformat(str(when)).astimezone(UTC).date().isoformat()
    except ValueError:
        return f"line {number}: its event has no valid time"
    if on != day:
        return f"line {number}: its event's time {when} is not on {day} (it is of {on})"
    return None


def verify_main(argv: Sequence[str] | None = None) -> int:
    """``taskapi audit verify``: 0 if every chain is intact, 1 at the first problem (which
    it prints), 2 if there is nothing to check."""
    parser = argparse.ArgumentParser(
        prog="taskapi audit verify",
        description="Check the hash chains of the audit log's files.",
    )
    parser.add_argument(
        "dir", nargs="?", type=Path, metavar="DIR", help="the audit folder (default <data>/audit)"
    )
    parser.add_argument(
        "--data", metavar="DIR", help="the data folder ($TASKAPI_DATA, else ./taskapi-data)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        folder = args.dir if args.dir is not None else Settings.from_env(args.data).audit_dir
        report = verify(folder)
    except (ConfigError, OSError) as exc:
        print(f"taskapi audit verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(asdict(report)).decode())
    elif report.ok:
        files = f"{report.files:,} file{'s' * (report.files != 1)}"
        print(f"ok: {files}, {report.lines:,} line{'s' * (report.lines != 1)}, chain intact")
    else:
        where = f" line {report.line}" if report.line is not None else ""
        print(f"BROKEN: {report.file}{where}: {report.problem}")
    return 0 if report.ok else 1
