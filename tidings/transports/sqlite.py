"""``sqlite:///path/events.db``: the embedded, durable log in one SQLite file.

URL options (query string): ``partitions`` (default partition count of new topics,
8), ``synchronous`` (``FULL``, the default: an acknowledged append survives a power
loss; ``NORMAL``: it survives a crash of the process or of the OS, but the last
commits before a power loss may be lost), ``lease`` (seconds a worker's partition
lease lasts without a heartbeat, 10), ``busy_timeout`` (seconds to wait for another
process's write, 30).

All writes of a process go through one writer thread that puts every write that
arrives while the previous transaction commits into the next one (group commit), each
in its own savepoint, so one failing write never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from tidings.errors import ConfigError, GroupBusy, TopicNotFound, TransportError
from tidings.partitioning import partition_for
from tidings.transport import (
    Capabilities,
    Consumer,
    GroupInfo,
    GroupPartition,
    MemberInfo,
    PartitionInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
    check_topic_name,
)
from tidings.transports._wakeup import FileWatcher

__all__ = ["SQLiteTransport"]

log = logging.getLogger("tidings.sqlite")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    last_ts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    PRIMARY KEY (topic_id, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    member TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ConfigError(
            f"not a SQLite log URL: {url!r}; write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigError(f"SQLite log URL {url!r} names no file, e.g. sqlite:///./tidings.db")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"partitions", "synchronous", "lease", "busy_timeout"}
    unknown = set(query) - known
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(unknown))} in {url!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    return path, query


def _number(query: dict[str, str], name: str, default: float, url: str) -> float:
    try:
        value = float(query.get(name, default))
    except ValueError:
        raise ConfigError(f"option {name}={query[name]!r} in {url!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"option {name} in {url!r} must be > 0, got {value}")
    return value


class SQLiteTransport(Transport):
    capabilities = Capabilities(persistent=True, multi_process=True)

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, query = _parse_url(url)
        self.default_partitions = int(_number(query, "partitions", 8, url))
        self.synchronous = query.get("synchronous", "FULL").upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError(
                f"option synchronous={self.synchronous!r} in {url!r}: use FULL (survives "
                "power loss, the default) or NORMAL (faster; survives process crashes only)"
            )
        self.lease_ms = int(_number(query, "lease", 10, url) * 1000)
        self.busy_timeout = _number(query, "busy_timeout", 30, url)
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()
        self._jobs: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._topic_ids: dict[str, tuple[int, int]] = {}  # name -> (id, partitions)
        self._topic_names: dict[int, str] = {}
        self._wake = asyncio.Event()
        self._watcher: FileWatcher | None = None
        self._last_retention = 0.0
        self._retention: asyncio.Task[None] | None = None
        self.retention_interval = 30.0
        self._started = False

    # -- connections and the writer -------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # isolation_level=None: we issue BEGIN ourselves, so that a write
                # transaction takes the lock up front (BEGIN IMMEDIATE) instead of
                # failing with SQLITE_BUSY half-way through on a lock upgrade.
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self.busy_timeout,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
            except sqlite3.Error as exc:
                raise TransportError(f"cannot open the SQLite log at {self.path!r}: {exc}") from exc
            self._local.conn = conn
            with self._conn_lock:
                self._connections.append(conn)
        return conn

    async def start(self) -> None:
        if self._started:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ConfigError(
                f"the folder {folder!r} of the SQLite log does not exist; create it first"
            )
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="tidings-sqlite-reader")
        self._started = True
        await self._write(lambda conn: conn.executescript(_SCHEMA) and None, begin=False)

    async def close(self) -> None:
        if not self._started:
            return
        # Let background writes end while the transport still accepts them.
        if self._retention is not None:
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        self._started = False
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        for pool in (self._writer, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)
        with self._conn_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _require_started(self) -> None:
        if not self._started:
            raise TransportError(
                "the SQLite transport is not started: use 'async with Tidings(...)' or "
                "await transport.start() first"
            )

    async def _write(self, job: Callable[[sqlite3.Connection], T], *, begin: bool = True) -> T:
        """Run ``job`` in the next group-committed write transaction."""
        self._require_started()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if not begin:  # schema set-up: runs alone, outside a transaction
            assert self._writer is not None
            return await loop.run_in_executor(self._writer, lambda: job(self._connect()))
        self._jobs.append((job, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._writer is not None
        while self._jobs:
            jobs, self._jobs = self._jobs, []
            try:
                results = await loop.run_in_executor(
                    self._writer, self._run_jobs, [job for job, _ in jobs]
                )
            except BaseException as exc:  # the commit itself failed: every job failed
                err = _translate(exc)
                for _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(err)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, fut), (ok, value) in zip(jobs, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            self._notify()

    def _run_jobs(self, jobs: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        results: list[tuple[bool, Any]] = []
        try:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job(conn)))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((False, _translate(exc)))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        self._require_started()
        assert self._readers is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: job(self._connect()))
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def _notify(self) -> None:
        old, self._wake = self._wake, asyncio.Event()
        old.set()

    def _ensure_watcher(self) -> None:
        if self._watcher is None:
            folder = os.path.dirname(os.path.abspath(self.path))
            self._watcher = FileWatcher(folder, os.path.basename(self.path), self._notify)
            self._watcher.start()

    async def wait_for_appends(self, timeout: float) -> None:
        self._ensure_watcher()
        wake = self._wake
        recheck = FileWatcher.POLL_INTERVAL if self._watcher and self._watcher.polling else 0.5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), min(timeout, recheck))

    # -- topics ---------------------------------------------------------------

    def _topic_in_tx(
        self,
        conn: sqlite3.Connection,
        topic: str,
        partitions: int | None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> tuple[int, int]:
        row = conn.execute("SELECT id, partitions FROM topics WHERE name=?", (topic,)).fetchone()
        if row is None:
            count = partitions or self.default_partitions
            cur = conn.execute(
                "INSERT INTO topics(name, partitions, retention_ms, retention_bytes, created_ms)"
                " VALUES (?,?,?,?,?)",
                (topic, count, retention_ms, retention_bytes, now_ms()),
            )
            tid = cur.lastrowid
            assert tid is not None
            conn.executemany(
                "INSERT INTO partitions(topic_id, partition) VALUES (?,?)",
                [(tid, p) for p in range(count)],
            )
            row = (tid, count)
        return int(row[0]), int(row[1])

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicInfo:
        check_topic_name(topic)
        if partitions is not None and partitions < 1:
            raise ConfigError(f"topic {topic!r}: partitions must be >= 1, got {partitions}")
        for name, value in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
            if value is not None and value <= 0:
                raise ConfigError(f"topic {topic!r}: {name} must be > 0, got {value}")
        ids = await self._write(
            lambda c: self._topic_in_tx(c, topic, partitions, retention_ms, retention_bytes)
        )
        self._remember(topic, ids)
        return await self._read(lambda c: self._topic_info(c, topic))

    def _remember(self, topic: str, ids: tuple[int, int]) -> None:
        self._topic_ids[topic] = ids
        self._topic_names[ids[0]] = topic

    async def _ids(self, topic: str) -> tuple[int, int]:
        ids = self._topic_ids.get(topic)
        if ids is None:
            row = await self._read(
                lambda c: c.execute(
                    "SELECT id, partitions FROM topics WHERE name=?", (topic,)
                ).fetchone()
            )
            if row is None:
                raise TopicNotFound(
                    f"topic {topic!r} does not exist in {self.url}; see 'tidings topics'"
                )
            ids = (int(row[0]), int(row[1]))
            self._remember(topic, ids)
        return ids

    def _topic_info(self, conn: sqlite3.Connection, topic: str) -> TopicInfo:
        row = conn.execute(
            "SELECT id, retention_ms, retention_bytes FROM topics WHERE name=?", (topic,)
        ).fetchone()
        if row is None:
            raise TopicNotFound(f"topic {topic!r} does not exist in {self.url}")
        parts = conn.execute(
            "SELECT partition, start_offset, next_offset, bytes FROM partitions"
            " WHERE topic_id=? ORDER BY partition",
            (row[0],),
        ).fetchall()
        return TopicInfo(topic, tuple(PartitionInfo(*p) for p in parts), row[1], row[2])

    async def topics(self) -> list[TopicInfo]:
        def job(conn: sqlite3.Connection) -> list[TopicInfo]:
            names = [r[0] for r in conn.execute("SELECT name FROM topics ORDER BY name")]
            return [self._topic_info(conn, n) for n in names]

        return await self._read(job)

    # -- append ---------------------------------------------------------------

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        if topic not in self._topic_ids:
            await self.create_topic(topic)
        tid, count = self._topic_ids[topic]
        placed = [(partition_for(key, count), key, value) for key, value in records]

        def job(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            heads = {
                p: [nxt, ts, 0]
                for p, nxt, ts in conn.execute(
                    "SELECT partition, next_offset, last_ts FROM partitions WHERE topic_id=?",
                    (tid,),
                )
            }
            now = now_ms()
            rows = []
            out = []
            for p, key, value in placed:
                head = heads[p]
                head[1] = max(head[1], now)  # timestamps never go back within a partition
                rows.append((tid, p, head[0], head[1], key, value))
                out.append((p, head[0]))
                head[0] += 1
                head[2] += len(value)
            conn.executemany(
                "INSERT INTO events(topic_id, partition, offset, ts, key, value)"
                " VALUES (?,?,?,?,?,?)",
                rows,
            )
            conn.executemany(
                "UPDATE partitions SET next_offset=?, last_ts=?, bytes=bytes+?"
                " WHERE topic_id=? AND partition=?",
                [(h[0], h[1], h[2], tid, p) for p, h in heads.items() if h[2]],
            )
            return out

        result = await self._write(job)
        if time.monotonic() - self._last_retention > self.retention_interval:
            # In the background: the publish that happens to trigger it must not wait.
            self._last_retention = time.monotonic()
            self._retention = asyncio.get_running_loop().create_task(self._retain_quietly())
        return result

    async def _retain_quietly(self) -> None:
        try:
            await self.enforce_retention()
        except Exception:
            log.exception("enforcing retention on %s failed; will try again", self.url)

    async def enforce_retention(self) -> int:
        """Delete records past their topic's age or size limit; return how many."""

        def job(conn: sqlite3.Connection) -> int:
            removed = 0
            limits = conn.execute(
                "SELECT id, retention_ms, retention_bytes FROM topics"
                " WHERE retention_ms IS NOT NULL OR retention_bytes IS NOT NULL"
            ).fetchall()
            for tid, max_age, max_bytes in limits:
                parts = conn.execute(
                    "SELECT partition, start_offset, next_offset, bytes FROM partitions"
                    " WHERE topic_id=?",
                    (tid,),
                ).fetchall()
                for p, start, end, size in parts:
                    cut = start
                    if max_age is not None:
                        row = conn.execute(
                            "SELECT min(offset) FROM events WHERE topic_id=? AND partition=?"
                            " AND ts >= ?",
                            (tid, p, now_ms() - max_age),
                        ).fetchone()
                        cut = max(cut, end if row[0] is None else row[0])
                    freed = 0
                    if cut > start:
                        freed = conn.execute(
                            "SELECT coalesce(sum(length(value)), 0) FROM events"
                            " WHERE topic_id=? AND partition=? AND offset < ?",
                            (tid, p, cut),
                        ).fetchone()[0]
                    if max_bytes is not None and size - freed > max_bytes:
                        surplus = size - freed - max_bytes
                        for off, length in conn.execute(
                            "SELECT offset, length(value) FROM events WHERE topic_id=?"
                            " AND partition=? AND offset >= ? ORDER BY offset",
                            (tid, p, cut),
                        ):
                            if surplus <= 0:
                                break
                            surplus -= length
                            freed += length
                            cut = off + 1
                    if cut > start:
                        removed += conn.execute(
                            "DELETE FROM events WHERE topic_id=? AND partition=? AND offset < ?",
                            (tid, p, cut),
                        ).rowcount
                        conn.execute(
                            "UPDATE partitions SET start_offset=?, bytes=bytes-?"
                            " WHERE topic_id=? AND partition=?",
                            (cut, freed, tid, p),
                        )
            return removed

        return await self._write(job)

    # -- reading outside groups -----------------------------------------------

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        tid, count = await self._ids(topic)
        if not 0 <= partition < count:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {partition}")
        rows = await self._read(
            lambda c: c.execute(
                "SELECT offset, ts, key, value FROM events WHERE topic_id=? AND partition=?"
                " AND offset >= ? ORDER BY offset LIMIT ?",
                (tid, partition, offset, limit),
            ).fetchall()
        )
        return [Record(topic, partition, o, ts, k, v) for o, ts, k, v in rows]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        tid, count = await self._ids(topic)

        def job(conn: sqlite3.Connection) -> dict[int, int]:
            out = {}
            for p in range(count):
                start, end = conn.execute(
                    "SELECT start_offset, next_offset FROM partitions"
                    " WHERE topic_id=? AND partition=?",
                    (tid, p),
                ).fetchone()
                # Timestamps rise with offsets within a partition (append keeps them
                # monotonic), so a binary search over the primary key finds the spot.
                lo, hi = start, end
                while lo < hi:
                    mid = (lo + hi) // 2
                    row = conn.execute(
                        "SELECT ts FROM events WHERE topic_id=? AND partition=? AND offset>=?"
                        " ORDER BY offset LIMIT 1",
                        (tid, p, mid),
                    ).fetchone()
                    if row is None or row[0] >= timestamp_ms:
                        hi = mid
                    else:
                        lo = mid + 1
                out[p] = lo
            return out

        return await self._read(job)

    # -- groups ---------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        from tidings.transports._sqlite_consumer import SQLiteConsumer

        for topic in topics:
            check_topic_name(topic)
        return SQLiteConsumer(self, group, list(topics), start_from, on_revoke)

    async def groups(self) -> list[GroupInfo]:
        def job(conn: sqlite3.Connection) -> list[GroupInfo]:
            now = now_ms()
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT grp FROM group_offsets UNION SELECT grp FROM members"
                    " WHERE expires_ms >= ? ORDER BY 1",
                    (now,),
                )
            ]
            topic_names = dict(conn.execute("SELECT id, name FROM topics").fetchall())
            out = []
            for group in names:
                owners = {
                    (tid, p): m
                    for tid, p, m in conn.execute(
                        "SELECT l.topic_id, l.partition, l.member FROM leases l JOIN members m"
                        " ON m.grp = l.grp AND m.member = l.member"
                        " WHERE l.grp=? AND l.expires_ms >= ? AND m.expires_ms >= ?",
                        (group, now, now),
                    )
                }
                rows = conn.execute(
                    "SELECT p.topic_id, p.partition, o.offset, p.next_offset, p.start_offset"
                    " FROM partitions p LEFT JOIN group_offsets o"
                    " ON o.grp=? AND o.topic_id=p.topic_id AND o.partition=p.partition"
                    " WHERE p.topic_id IN (SELECT topic_id FROM group_offsets WHERE grp=?"
                    "   UNION SELECT topic_id FROM leases WHERE grp=?)"
                    " ORDER BY p.topic_id, p.partition",
                    (group, group, group),
                ).fetchall()
                parts = tuple(
                    GroupPartition(
                        group, topic_names[tid], p, committed, end, start, owners.get((tid, p))
                    )
                    for tid, p, committed, end, start in rows
                )
                members = tuple(
                    MemberInfo(
                        m,
                        host,
                        pid,
                        tuple(
                            sorted(
                                (topic_names[tid], p) for (tid, p), o in owners.items() if o == m
                            )
                        ),
                    )
                    for m, host, pid in conn.execute(
                        "SELECT member, host, pid FROM members WHERE grp=? AND expires_ms >= ?"
                        " ORDER BY member",
                        (group, now),
                    )
                )
                out.append(
                    GroupInfo(
                        group, tuple(sorted(parts, key=lambda r: (r.topic, r.partition))), members
                    )
                )
            return out

        return await self._read(job)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        tid, count = await self._ids(topic)
        bad = [p for p in offsets if not 0 <= p < count]
        if bad:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {bad}")

        def job(conn: sqlite3.Connection) -> None:
            now = now_ms()
            live = conn.execute(
                "SELECT count(*) FROM members WHERE grp=? AND expires_ms >= ?", (group, now)
            ).fetchone()[0]
            if live and not force:
                raise GroupBusy(
                    f"group {group!r} has {live} live member(s); stop its workers first, "
                    "or pass --force (they will reload the new offsets)"
                )
            for p, offset in offsets.items():
                start, end = conn.execute(
                    "SELECT start_offset, next_offset FROM partitions"
                    " WHERE topic_id=? AND partition=?",
                    (tid, p),
                ).fetchone()
                conn.execute(
                    "INSERT INTO group_offsets(grp, topic_id, partition, offset, updated_ms)"
                    " VALUES (?,?,?,?,?) ON CONFLICT(grp, topic_id, partition)"
                    " DO UPDATE SET offset=excluded.offset, updated_ms=excluded.updated_ms",
                    (group, tid, p, min(max(offset, start), end), now),
                )
            # Live members lose these leases, so they drop what they hold in memory,
            # reclaim, and start again from the new offsets; their stale commits are
            # fenced in the meantime.
            conn.execute("DELETE FROM leases WHERE grp=? AND topic_id=?", (group, tid))

        await self._write(job)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return TransportError(
            f"the SQLite log is locked by another process for longer than busy_timeout: {exc}"
        )
    if isinstance(exc, sqlite3.Error):
        return TransportError(f"SQLite log error: {exc}")
    return exc
