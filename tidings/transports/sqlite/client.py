"""The SQLite log as the transport and its consumers use it: connections, the writer,
the readers, topic ids, wake-ups and leases, behind one small interface.

It is the adapter's boundary: every statement runs through :meth:`LogClient.write`,
:meth:`~LogClient.append`, :meth:`~LogClient.read`, :meth:`~LogClient.read_inline` or
:meth:`~LogClient.run_alone`, and each raises the native sqlite3 errors of its job as
tidings errors, translated by :func:`translate` (errors a job raises on purpose, such
as TopicNotFound or GroupBusy, pass through). The transport and the consumer import
this module; it imports neither of them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tidings._sqlite import is_busy, use_wal
from tidings.errors import ConfigError, TopicNotFound, TransportError
from tidings.partitioning import partition_for
from tidings.transport import FOREVER, SYSTEM_CLOCK, Clock, FaultHook, check_topic_name
from tidings.transports._leases import LeaseWatch
from tidings.transports.sqlite.sql import create_schema, ensure_topic
from tidings.transports.sqlite.wakeup import AppendSignal
from tidings.transports.sqlite.writer import GroupCommitWriter

__all__ = ["WAL_SIZE_LIMIT", "LogClient", "translate"]

T = TypeVar("T")

WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file keeps after a checkpoint


def translate(exc: sqlite3.Error, *, opening: str | None = None) -> TransportError:
    """The TransportError for a native sqlite3 error; ``opening``: the path of a log
    that could not be opened."""
    if is_busy(exc):
        reason = (
            "the SQLite log is locked by another process for longer than busy_timeout "
            f"({exc}); let that process finish, or raise busy_timeout in the URL"
        )
    elif opening is not None:
        reason = str(exc)
    else:
        reason = f"SQLite log error: {exc}"
    if opening is not None:
        return TransportError(f"cannot open the SQLite log at {opening!r}: {reason}")
    return TransportError(reason)


class LogClient:
    """One transport's handle on the log file at ``path`` (its URL options parsed).

    ``clock`` and ``fault_hook`` are the transport's (it forwards both here);
    ``leases`` judges other members' beats by that clock; ``topic_ids`` caches each
    known topic's (id, partition count); ``appended`` wakes readers.
    """

    def __init__(
        self,
        url: str,
        path: str,
        *,
        create: bool,
        synchronous: str,
        busy_timeout: float,
        lease_ms: int,
        default_partitions: int,
    ) -> None:
        self.url = url
        self.path = path
        self.create = create
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.lease_ms = lease_ms
        self.default_partitions = default_partitions
        self.clock: Clock = SYSTEM_CLOCK
        self.fault_hook: FaultHook | None = None
        self.leases: LeaseWatch[tuple[str, str]] = LeaseWatch(
            lambda: self.clock.monotonic(), lease_ms / 1000
        )
        self.topic_ids: dict[str, tuple[int, int]] = {}  # name -> (id, partitions)
        self.appended = AppendSignal(path)
        self.started = False
        self._writer: GroupCommitWriter | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()

    # -- opening and closing ----------------------------------------------------------

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
                raise translate(exc, opening=self.path) from exc
            self._local.conn = conn
            with self._conn_lock:
                self._connections.append(conn)
        return conn

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

    async def start(self) -> None:
        if self.started:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ConfigError(
                f"the folder {folder!r} of the SQLite log does not exist; create it first"
            )
        if not self.create and not os.path.exists(self.path):
            raise ConfigError(
                f"there is no event log at {self.path!r} ({self.url}); check the URL "
                "(an app makes the log when it starts, as does 'tidings publish --create')"
            )
        self._writer = GroupCommitWriter(
            self._connect, self.synchronous, self.busy_timeout, self.appended.notify
        )
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="tidings-sqlite-reader")
        self.started = True
        try:
            await self.run_alone(create_schema)
        except BaseException:
            await self.close()  # so that start() can be tried again
            raise

    async def close(self) -> None:
        """Let the writes handed in so far end, then close every connection."""
        if not self.started:
            return
        if self._writer is not None:
            await self._writer.drain()
        self.started = False
        self.appended.stop()
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
        if not self.started:
            raise TransportError(
                "the SQLite transport is not started: use 'async with Tidings(...)' or "
                "await transport.start() first"
            )

    def _started_writer(self) -> GroupCommitWriter:
        self._require_started()
        assert self._writer is not None
        return self._writer

    # -- running statements -----------------------------------------------------------

    async def write(self, job: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``job`` in the next group-committed write transaction (see
        :meth:`GroupCommitWriter.write`, also for ``durable``)."""
        writer = self._started_writer()
        try:
            return await writer.write(job, durable=durable)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    async def append(
        self, ids: tuple[int, int], records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        """Append ``(key, value)`` records durably to the topic of ``ids`` (its id and
        partition count), each in its key's partition, stamped with the clock's time;
        return each one's (partition, offset)."""
        writer = self._started_writer()
        tid, count = ids
        placed = [(partition_for(key, count), key, value) for key, value in records]
        try:
            return await writer.append(tid, placed, self.clock.time_ms)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` on a reader thread."""
        self._require_started()
        assert self._readers is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: job(self._connect()))
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def read_inline(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job``, a short and bounded read, on the calling (the loop's) thread."""
        try:
            return job(self._connect_inline())
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    async def run_alone(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` on the writer thread outside any transaction (the schema, a
        checkpoint)."""
        writer = self._started_writer()
        try:
            return await writer.run_alone(job)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    async def fault(self, point: str) -> None:
        """The transport's fault point ``point`` (see ``Transport.fault_hook``)."""
        if self.fault_hook is not None:
            await self.fault_hook(point)

    # -- topics -------------------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> tuple[int, int]:
        """Create ``topic`` if missing (see ``Transport.create_topic``); return its
        (id, partition count)."""
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
        count = partitions or self.default_partitions
        ids = await self.write(
            lambda c: ensure_topic(c, topic, count, age, size, keep_unread, self.clock.time_ms())
        )
        self.topic_ids[topic] = ids
        return ids

    def forget(self, topic: str, tid: int | None = None) -> None:
        """Drop ``topic`` from ``topic_ids`` (only if its id is ``tid``, when given): it
        was deleted, and the next use looks it up, or makes it, again."""
        known = self.topic_ids.get(topic)
        if known is not None and (tid is None or known[0] == tid):
            del self.topic_ids[topic]

    async def ids(self, topic: str) -> tuple[int, int]:
        """The (id, partition count) of ``topic``, which must exist."""
        ids = self.topic_ids.get(topic)
        if ids is None:
            row = await self.read(
                lambda c: c.execute(
                    "SELECT id, partitions FROM topics WHERE name=?", (topic,)
                ).fetchone()
            )
            if row is None:
                raise TopicNotFound(
                    f"topic {topic!r} does not exist in {self.url}; see 'tidings topics'"
                )
            ids = (int(row[0]), int(row[1]))
            self.topic_ids[topic] = ids
        return ids
