"""The writer of the SQLite log: every write of a process, on one thread, group-committed.

Every write that arrives while the previous transaction commits goes into the next
one, each in its own savepoint, so one failing write never fails its neighbours. The
partitions' next offsets are read once per transaction and written back once before
it commits, so appends in one group commit cost one INSERT each.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tidings._sqlite import execute_when_free
from tidings.errors import TopicNotFound

__all__ = ["GroupCommitWriter"]

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]


class GroupCommitWriter:
    """Runs write jobs on one thread; ``on_commit`` runs (on the loop) after each commit.

    ``connect`` gives the calling thread's connection; the writer only ever calls it
    on its own thread. The state below marked "writer thread" is touched only there.
    A job's error, native or not, is raised as it is to the job's caller: the client
    (``client.py``) translates sqlite3's.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        synchronous: str,
        busy_timeout: float,
        on_commit: Callable[[], None],
    ) -> None:
        self._connect = connect
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._on_commit = on_commit
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-writer")
        self._jobs: list[tuple[Job, asyncio.Future[Any], bool]] = []
        self._flusher: asyncio.Task[None] | None = None
        # writer thread:
        self._level: str | None = None
        self._own_busy_loop = False
        # {topic id: {partition: [next offset, last timestamp, bytes added, records added]}}
        self._heads: dict[int, dict[int, list[int]]] = {}

    async def run_alone(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` on the writer thread outside any transaction (schema set-up)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: job(self._connect()))

    async def write(self, job: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``job`` in the next group-committed write transaction.

        ``durable=False`` is for bookkeeping whose loss on a power cut only costs a
        redelivery (offset commits, heartbeats, retention): a transaction made only of
        such jobs commits without waiting for an fsync; the next durable commit
        fsyncs the WAL, and so them too.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.append((job, fut, durable))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await fut

    async def drain(self) -> None:
        """Wait until every write handed in so far has committed or failed."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._jobs:
            jobs, self._jobs = self._jobs, []
            durable = any(d for _, _, d in jobs)
            try:
                results = await loop.run_in_executor(
                    self._pool, self._run_jobs, [job for job, _, _ in jobs], durable
                )
            except BaseException as exc:  # the commit itself failed: every job failed
                for _, fut, _ in jobs:
                    if not fut.done():
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, fut, _), (ok, value) in zip(jobs, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            self._on_commit()

    def _run_jobs(self, jobs: list[Job], durable: bool) -> list[tuple[bool, Any]]:
        conn = self._connect()
        level = self.synchronous if durable else "NORMAL"
        if self._level != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._level = level
        self._begin(conn)
        self._heads.clear()
        results: list[tuple[bool, Any]] = []
        try:
            for job in jobs:
                if not getattr(job, "appends", False):
                    self._store_heads(conn)  # other jobs read the partitions table
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job(conn)))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((False, exc))
            self._store_heads(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def append(
        self, tid: int, placed: Sequence[tuple[int, str | None, bytes]], now: Callable[[], int]
    ) -> list[tuple[int, int]]:
        """Append ``(partition, key, value)`` records to topic ``tid`` in the next
        durable transaction, stamped ``now()`` (never earlier than a partition's last
        record); return each one's (partition, offset)."""

        def job(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            heads = self._partition_heads(conn, tid)
            if not heads:  # deleted since its id was looked up (maybe by another process)
                raise TopicNotFound(f"topic #{tid} was deleted")
            before = {p: h[:] for p, h in heads.items()}
            ts = now()
            rows = []
            out = []
            for p, key, value in placed:
                head = heads[p]
                head[1] = max(head[1], ts)  # timestamps never go back within a partition
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
        return await self.write(job)

    def _partition_heads(self, conn: sqlite3.Connection, tid: int) -> dict[int, list[int]]:
        """The partitions of topic ``tid``: [next offset, last timestamp, bytes added,
        records added] as of this transaction (for append jobs, which mark themselves
        ``appends``)."""
        heads = self._heads.get(tid)
        if heads is None:
            heads = self._heads[tid] = {
                p: [nxt, ts, 0, 0]
                for p, nxt, ts in conn.execute(
                    "SELECT partition, next_offset, last_ts FROM partitions WHERE topic_id=?",
                    (tid,),
                )
            }
        return heads

    def _store_heads(self, conn: sqlite3.Connection) -> None:
        if not self._heads:
            return
        conn.executemany(
            "UPDATE partitions SET next_offset=?, last_ts=?, bytes=bytes+?"
            " WHERE topic_id=? AND partition=?",
            [
                (h[0], h[1], h[2], tid, p)
                for tid, heads in self._heads.items()
                for p, h in heads.items()
                if h[3]  # records were added (an empty record adds no bytes)
            ],
        )
        self._heads.clear()

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write in short steps.

        SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, which puts
        milliseconds on the publish tail whenever a worker in another process commits
        offsets; polling every 0.1 ms (doubling to 2 ms) takes the lock when it is free.
        """
        if not self._own_busy_loop:
            conn.execute("PRAGMA busy_timeout=0")
            self._own_busy_loop = True
        execute_when_free(conn, "BEGIN IMMEDIATE", self.busy_timeout, 0.0001, 0.002)
