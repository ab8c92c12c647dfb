"""The writer of the SQLite log: every write of a process, on one thread, group-committed.

Every write that arrives while the previous transaction commits goes into the next
one, each in its own savepoint, so one failing write never fails its neighbours. The
partitions' next offsets are read once per transaction and written back once before
it commits. Appends that follow one another in a transaction go in together, in one
savepoint and one ``executemany``; if that fails, they are tried again one by one,
each in its own savepoint, so that only the failing one fails.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

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
        self._jobs: list[tuple[Job | _Append, asyncio.Future[Any], bool]] = []
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
        result: T = await self._submit(job, durable)
        return result

    def _submit(self, job: Job | _Append, durable: bool) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.append((job, fut, durable))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return fut

    async def drain(self) -> None:
        """Wait until every write handed in so far has committed or failed."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._jobs:
            # A write whose caller was cancelled before its transaction began is dropped:
            # that caller was told nothing was written, and nothing is.
            jobs = [j for j in self._jobs if not j[1].cancelled()]
            self._jobs = []
            if not jobs:
                continue
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

    def _run_jobs(self, jobs: list[Job | _Append], durable: bool) -> list[tuple[bool, Any]]:
        conn = self._connect()
        level = self.synchronous if durable else "NORMAL"
        if self._level != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._level = level
        self._begin(conn)
        self._heads.clear()
        results: list[tuple[bool, Any]] = []
        try:
            i = 0
            while i < len(jobs):
                if isinstance(jobs[i], _Append):
                    j = i + 1
                    while j < len(jobs) and isinstance(jobs[j], _Append):
                        j += 1
                    results += self._run_appends(conn, cast(list[_Append], jobs[i:j]))
                    i = j
                    continue
                self._store_heads(conn)  # other jobs read the partitions table
                results.append(_in_savepoint(conn, cast(Job, jobs[i])))
                i += 1
            self._store_heads(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _run_appends(
        self, conn: sqlite3.Connection, appends: list[_Append]
    ) -> list[tuple[bool, Any]]:
        """Appends that follow one another: all their rows in one ``executemany``, in one
        savepoint; if anything fails, rolled back and run again one by one, each in its
        own savepoint, so that only the failing one fails."""
        if len(appends) > 1:
            before = {
                tid: {p: h[:] for p, h in heads.items()} for tid, heads in self._heads.items()
            }
            conn.execute("SAVEPOINT appends")
            try:
                rows: list[tuple[Any, ...]] = []
                placed = [a.place(self._partition_heads(conn, a.tid), rows) for a in appends]
                conn.executemany(_INSERT, rows)
                conn.execute("RELEASE appends")
                return [(True, out) for out in placed]
            except Exception:
                conn.execute("ROLLBACK TO appends")
                conn.execute("RELEASE appends")
                self._heads = before  # the rows are rolled back: so are their offsets
        return [_in_savepoint(conn, functools.partial(self._append_one, a)) for a in appends]

    def _append_one(self, append: _Append, conn: sqlite3.Connection) -> list[tuple[int, int]]:
        heads = self._partition_heads(conn, append.tid)
        before = {p: h[:] for p, h in heads.items()}
        rows: list[tuple[Any, ...]] = []
        try:
            out = append.place(heads, rows)
            conn.executemany(_INSERT, rows)
        except BaseException:
            heads.update(before)  # its savepoint is rolled back: so are its offsets
            raise
        return out

    def append(
        self, tid: int, placed: Sequence[tuple[int, str | None, bytes]], now: Callable[[], int]
    ) -> asyncio.Future[list[tuple[int, int]]]:
        """Append ``(partition, key, value)`` records to topic ``tid`` in the next
        durable transaction, stamped ``now()`` (never earlier than a partition's last
        record); the future gives each one's (partition, offset). A plain function
        returning the future, not a coroutine: one frame less per publish."""
        return self._submit(_Append(tid, placed, now), True)

    def _partition_heads(self, conn: sqlite3.Connection, tid: int) -> dict[int, list[int]]:
        """The partitions of topic ``tid``: [next offset, last timestamp, bytes added,
        records added] as of this transaction; TopicNotFound if it has none (deleted
        since its id was looked up, maybe by another process)."""
        heads = self._heads.get(tid)
        if heads is None:
            heads = self._heads[tid] = {
                p: [nxt, ts, 0, 0]
                for p, nxt, ts in conn.execute(
                    "SELECT partition, next_offset, last_ts FROM partitions WHERE topic_id=?",
                    (tid,),
                )
            }
            if not heads:
                del self._heads[tid]
                raise TopicNotFound(f"topic #{tid} was deleted")
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


_INSERT = "INSERT INTO events(topic_id, partition, offset, ts, key, value) VALUES (?,?,?,?,?,?)"


class _Append:
    """An append job: ``(partition, key, value)`` records for topic ``tid``. The writer
    runs appends that follow one another in a transaction together."""

    __slots__ = ("now", "placed", "tid")

    def __init__(
        self, tid: int, placed: Sequence[tuple[int, str | None, bytes]], now: Callable[[], int]
    ) -> None:
        self.tid = tid
        self.placed = placed
        self.now = now

    def place(
        self, heads: dict[int, list[int]], rows: list[tuple[Any, ...]]
    ) -> list[tuple[int, int]]:
        """Give each record the next offset of its partition in ``heads`` (moved on),
        add its row to ``rows``; return each one's (partition, offset)."""
        ts = self.now()
        tid = self.tid
        out = []
        for p, key, value in self.placed:
            head = heads[p]
            if ts > head[1]:
                head[1] = ts  # else: timestamps never go back within a partition
            offset = head[0]
            rows.append((tid, p, offset, head[1], key, value))
            out.append((p, offset))
            head[0] = offset + 1
            head[2] += len(value)
            head[3] += 1
        return out


def _in_savepoint(conn: sqlite3.Connection, job: Job) -> tuple[bool, Any]:
    """Run ``job`` in a savepoint of its own: (True, its result), or, rolled back,
    (False, its error)."""
    conn.execute("SAVEPOINT job")
    try:
        result = job(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return (False, exc)
    conn.execute("RELEASE job")
    return (True, result)
