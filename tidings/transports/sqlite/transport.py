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
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from tidings._sqlite import is_busy, use_wal
from tidings.errors import ConfigError, TopicNotFound, TransportError
from tidings.partitioning import partition_for
from tidings.transport import (
    FOREVER,
    Capabilities,
    Consumer,
    GroupInfo,
    PartitionInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
    check_topic_name,
)
from tidings.transports.sqlite.consumer import LeaseWatch
from tidings.transports.sqlite.sql import (
    create_schema,
    delete_below,
    describe_groups,
    in_one_snapshot,
    offsets_for_time,
    retention_cuts,
    set_group_offsets,
    translate_error,
)
from tidings.transports.sqlite.wakeup import FileWatcher
from tidings.transports.sqlite.writer import GroupCommitWriter

__all__ = ["SQLiteTransport"]

log = logging.getLogger("tidings.sqlite")

T = TypeVar("T")

WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint


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

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.create = create
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
        self.leases = LeaseWatch(lambda: self.clock.monotonic(), self.lease_ms / 1000)
        self._writer: GroupCommitWriter | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()
        self._topic_ids: dict[str, tuple[int, int]] = {}  # name -> (id, partitions)
        self._wake = asyncio.Event()
        self._watcher: FileWatcher | None = None
        self._last_retention = 0.0
        self._retention: asyncio.Task[None] | None = None
        self._retaining = asyncio.Lock()
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
                use_wal(conn, self.busy_timeout)  # processes may open a new log together
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                # After a checkpoint the WAL is cut back to this size, not to nothing:
                # it stays reusable, so retention can still delete on a full disk.
                conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                reason = translate_error(exc) if is_busy(exc) else exc  # says what to do
                raise TransportError(
                    f"cannot open the SQLite log at {self.path!r}: {reason}"
                ) from exc
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
        if not self.create and not os.path.exists(self.path):
            raise ConfigError(
                f"there is no event log at {self.path!r} ({self.url}); check the URL "
                "(publishing to a topic creates the log)"
            )
        self._writer = GroupCommitWriter(
            self._connect, self.synchronous, self.busy_timeout, self._notify
        )
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="tidings-sqlite-reader")
        self._started = True
        try:
            await self._writer.run_alone(create_schema)
        except BaseException:
            await self.close()  # so that start() can be tried again
            raise

    async def close(self) -> None:
        if not self._started:
            return
        # Let background writes end while the transport still accepts them.
        if self._retention is not None:
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._writer is not None:
            await self._writer.drain()
        self._started = False
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._writer is not None:
            self._writer.shutdown()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
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

    async def _write(self, job: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``job`` in the next group-committed write transaction (see
        :class:`GroupCommitWriter`)."""
        self._require_started()
        assert self._writer is not None
        return await self._writer.write(job, durable=durable)

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        self._require_started()
        assert self._readers is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: job(self._connect()))
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    def _connect_inline(self) -> sqlite3.Connection:
        """A connection for short, bounded reads on the event loop's own thread.

        For the consumer's fetch: in a reader thread, sqlite3 gives up and takes back
        the GIL for every row, and each take-back waits for the busy loop thread's
        switch interval (5 ms); a few hundred rows read here cost well under a
        millisecond instead. See docs/decisions/0002-fetch-on-the-event-loop.md.
        """
        self._require_started()
        conn = self._connect()
        if not getattr(self._local, "inline", False):
            # Never hold the loop for long: a read that finds the file busy (rare in WAL
            # mode) fails after 1 s, and the worker tries again a moment later.
            conn.execute("PRAGMA busy_timeout=1000")
            self._local.inline = True
        return conn

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
        keep_unread: bool = False,
    ) -> tuple[int, int]:
        row = conn.execute("SELECT id, partitions FROM topics WHERE name=?", (topic,)).fetchone()
        if row is None:
            count = partitions or self.default_partitions
            cur = conn.execute(
                "INSERT INTO topics(name, partitions, retention_ms, retention_bytes, created_ms,"
                " keep_unread) VALUES (?,?,?,?,?,?)",
                (topic, count, retention_ms, retention_bytes, self.clock.time_ms(), keep_unread),
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
        keep_unread: bool = False,
    ) -> TopicInfo:
        check_topic_name(topic)
        if partitions is not None and partitions < 1:
            raise ConfigError(f"topic {topic!r}: partitions must be >= 1, got {partitions}")
        for name, value in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
            if value is not None and value <= 0 and value != FOREVER:
                raise ConfigError(
                    f"topic {topic!r}: {name} must be > 0 (or FOREVER, -1), got {value}"
                )
        age = None if retention_ms == FOREVER else retention_ms  # no limit: kept forever
        size = None if retention_bytes == FOREVER else retention_bytes
        ids = await self._write(
            lambda c: self._topic_in_tx(c, topic, partitions, age, size, keep_unread)
        )
        self._topic_ids[topic] = ids
        return await self._read(lambda c: self._topic_info(c, topic))

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
            self._topic_ids[topic] = ids
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
            assert self._writer is not None
            heads = self._writer.heads(conn, tid)
            before = {p: h[:] for p, h in heads.items()}
            now = self.clock.time_ms()
            rows = []
            out = []
            for p, key, value in placed:
                head = heads[p]
                head[1] = max(head[1], now)  # timestamps never go back within a partition
                rows.append((tid, p, head[0], head[1], key, value))
                out.append((p, head[0]))
                head[0] += 1
                head[2] += len(value)
                head[3] += 1
            try:
                conn.executemany(
                    "INSERT INTO events(topic_id, partition, offset, ts, key, value)"
                    " VALUES (?,?,?,?,?,?)",
                    rows,
                )
            except BaseException:
                heads.update(before)  # its savepoint is rolled back: so are its offsets
                raise
            return out

        job.appends = True  # type: ignore[attr-defined]
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
        """Delete records past their topic's age or size limit; return how many.

        In transactions of at most RETENTION_BATCH records, so that appends, commits
        and heartbeats of every process get the write lock in between (one transaction
        for 400,000 records held it 2.4 s; a lease-length hold expires every lease).
        Records a group had not read yet are reported (a WARNING, and the group's
        ``lost`` count in ``tidings groups``); a topic made with ``keep_unread`` keeps
        them while the group is live. Then the WAL is checkpointed, back to its limit.
        """
        async with self._retaining:  # one run at a time (the background one, a caller's)
            return await self._enforce_retention()

    async def _enforce_retention(self) -> int:
        live = await self._read(self._live_groups)
        now = self.clock.time_ms()
        cuts = await self._read(lambda c: in_one_snapshot(c, lambda: retention_cuts(c, now, live)))
        removed = 0
        skipped: dict[tuple[str, int, int], list[int]] = {}  # (group, topic id, p) -> span
        for tid, p, cut, keep_unread in cuts:
            done = False
            while not done:
                keep_for = live if keep_unread else None
                job = functools.partial(delete_below, tid=tid, p=p, cut=cut, keep_for=keep_for)
                count, done, lost = await self._write(job, durable=False)
                removed += count
                for group, first, last in lost:
                    span = skipped.setdefault((group, tid, p), [first, last, 0])
                    span[1] = last
                    span[2] += last - first + 1
        names = {tid: name for name, (tid, _) in self._topic_ids.items()}
        for (group, tid, p), (first, last, count) in skipped.items():
            log.warning(
                "retention removed %d record(s) of %s[%d] that group %s had not read "
                "(offsets %d..%d); they are skipped (see 'tidings groups', column lost)",
                count, names.get(tid, f"topic #{tid}"), p, group, first, last,
            )  # fmt: skip
        if removed:
            assert self._writer is not None
            await self._writer.run_alone(
                lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall() and None
            )
        return removed

    def _live_groups(self, conn: sqlite3.Connection) -> set[str]:
        """Groups with a member whose beat this process has not seen stand still for a
        lease length (a process that just started counts every member live)."""
        rows = conn.execute("SELECT grp, member, beat FROM members").fetchall()
        return {g for g, m, beat in rows if not self.leases.expired(g, m, beat)}

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

        return await self._read(lambda c: offsets_for_time(c, tid, count, timestamp_ms))

    # -- groups ---------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        from tidings.transports.sqlite.consumer import SQLiteConsumer

        return SQLiteConsumer(self, group, list(topics), start_from, on_revoke)

    async def groups(self) -> list[GroupInfo]:
        return await self._read(describe_groups)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        tid, count = await self._ids(topic)
        bad = [p for p in offsets if not 0 <= p < count]
        if bad:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {bad}")

        await self._write(lambda c: set_group_offsets(c, group, tid, offsets, force))
