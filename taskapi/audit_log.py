"""The audit log: every event of the system, one JSON line each, in a keyed chain per
UTC day (decision 0032).

Files ``audit-YYYY-MM-DD.jsonl`` (the UTC day of the event's ``time``) in one folder.
Each line is compact JSON with sorted keys, its MAC last (:mod:`taskapi.audit_chain`)::

    {"audited_at":"2026-11-30T09:00:00.123456Z","event":{...},"kid":"…","n":17,"mac":"…"}

``event`` is the whole CloudEvent as written (``tidings.encode``), ``n`` counts lines
from 1 in each file, ``kid`` names the key and ``mac`` is the HMAC of the line chained
to the previous line's. An event read at a later version than it was written (upcast)
has ``"read": {"version": 2, "data": {...}}`` too: the payload as the services read it.
Changing a byte of any line, or removing, inserting or reordering lines, breaks the
chain there; lines cut from the end are what the checkpoints in the log show
(:mod:`taskapi.audit_anchor`); :mod:`taskapi.audit_verify` (``taskapi audit verify``)
checks both.

Days are chained separately because events of a past day keep arriving (a replay, a
producer's late event): the file of a past day can grow after the next day's has begun.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from taskapi.audit_chain import AuditKey, genesis, link, seal, unseal
from tidings import Event, encode

__all__ = ["AuditLog", "AuditLogError", "Head", "file_name", "heads_on_disk"]

log = logging.getLogger(__name__)

# Event ids remembered per file for deduplication: the lines whose inbox mark may not be
# committed yet when the process dies (appends finish before their marks commit).
RECENT = 10_000
_MAX_CHAINS = 4  # files whose state (up to RECENT ids each) is kept; others reload
_CHUNK = 1 << 20


def _day(event: Event) -> str:
    return event.time.astimezone(UTC).date().isoformat()


def file_name(day: str) -> str:
    """The audit file of ``day`` (``YYYY-MM-DD``)."""
    return f"audit-{day}.jsonl"


class AuditLogError(Exception):
    """An audit file whose chain cannot be continued: its last line is not an audit
    line, or was written with another key."""


@dataclass(frozen=True, slots=True)
class Head:
    """A file's newest line as written: its day, how many lines the file has, and the
    line's link (its MAC), which a checkpoint anchors."""

    day: str
    lines: int
    mac: str


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
    """Appends events to the keyed chains of the files in ``folder``, with ``key``.

    Appends to one file are serialized (an asyncio lock in the process, ``flock`` across
    processes: several workers of the group may share the folder) and each is on disk
    (fsync) when :meth:`append` returns.
    """

    def __init__(self, folder: Path, key: AuditKey) -> None:
        self.folder = Path(folder)
        self.key = key
        self._kid = key.id
        self._chains: OrderedDict[str, _Chain] = OrderedDict()

    def path_for(self, event: Event) -> Path:
        """The file ``event`` goes to."""
        return self.folder / file_name(_day(event))

    async def append(self, event: Event, *, read: dict[str, Any] | None = None) -> Head | None:
        """Append ``event`` (and ``read``, what it was read as, if given) to its day's
        file; return the file's new head, or None (nothing written) if its id is among
        the file's last :data:`RECENT` lines. Raises OSError, or AuditLogError if the
        file's last line is damaged or keyed with another key."""
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
        chain = self._chains[day] = _Chain(day, self.folder / file_name(day))
        # A replay through many days would otherwise keep 10,000 ids of each: forget
        # idle files (reloaded from disk on their next append).
        for old in list(self._chains):
            if len(self._chains) <= _MAX_CHAINS:
                break
            if old != day and not self._chains[old].lock.locked():
                del self._chains[old]
        return chain

    def _append(self, chain: _Chain, event_id: str, doc: dict[str, Any]) -> Head | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(chain.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            size = os.fstat(fd).st_size
            if size != chain.size:  # first use in this process, or another one wrote
                size = _load(chain, fd, size, self._kid)
            if event_id in chain.ids:
                return None
            stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            body = orjson.dumps(
                {"n": chain.n + 1, "kid": self._kid, "audited_at": stamp, **doc},
                option=orjson.OPT_SORT_KEYS,
            )
            line = seal(self.key.secret, chain.head, body)
            data = line + b"\n"
            # One write: a crash leaves at most one partial line, cut off on the next load.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{chain.path}: wrote {written} of {len(data)} bytes")
            os.fsync(fd)
            if size == 0:
                _fsync_dir(self.folder)  # a new file's name must survive a crash too
            chain.n += 1
            chain.head = link(line)
            chain.size = size + len(data)
            chain.remember(event_id)
            return Head(chain.day, chain.n, chain.head)
        finally:
            os.close(fd)


def _load(chain: _Chain, fd: int, size: int, kid: str) -> int:
    """Read the chain's head and recent ids from the file; cut off a partial last line.
    Return the file's size. A file of unkeyed lines is continued with keyed ones, which
    seal them (the first keyed line chains to the last unkeyed one's SHA-256)."""
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
        sealed = unseal(lines[-1])
        written = orjson.loads(sealed[0]).get("kid") if sealed is not None else kid
        if written != kid:
            raise AuditLogError(
                f"{chain.path}: the last line was written with key id {written}, this "
                f"service's key is {kid}: it cannot continue the chain with another key"
            )
        chain.n, chain.head = n, link(lines[-1])
    for raw in lines:
        try:
            chain.remember(orjson.loads(raw)["event"]["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a damaged line (verify reports it) is no event to deduplicate
    chain.size = size
    return size


def heads_on_disk(folder: Path) -> list[Head]:
    """The head of every audit file in ``folder`` as it is on disk (its last complete
    line's ``n`` and link), by day; a file whose last line is no audit line is left out
    (``taskapi audit verify`` reports it)."""
    found = []
    for path in sorted(Path(folder).glob("audit-*.jsonl")):
        day = path.name[len("audit-") : -len(".jsonl")]
        with path.open("rb") as file:
            fd = file.fileno()
            end = _last_newline(fd, os.fstat(fd).st_size) + 1  # a partial line is no head
            lines = _tail(fd, end, 1) if end else []
        try:
            n = orjson.loads(lines[-1])["n"] if lines else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            n = None
        if type(n) is int:
            found.append(Head(day, n, link(lines[-1])))
    return found


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
