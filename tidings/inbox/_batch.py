"""A lane's batch: the effects and marks of a run of one lane's events in one
transaction, committed once (decision 0014).

The worker hands a lane's events one after the other; for handlers with a session,
the inbox keeps one connection and transaction open across them
(:class:`tidings.middleware.lane.LaneWork`), and each event gets a SAVEPOINT of its
own: its mark is inserted first in it (claim), then the handler writes through a
``Session`` joined to it; a handler that fails rolls back to its savepoint, and the
events before it keep theirs. The worker commits the batch before the offsets of its
events (a crash before that commit: the whole batch is handled again, and nothing of
it was committed; after it: the events are found marked and skipped).

On SQLite the batch holds the file's write lock from its start (``BEGIN IMMEDIATE``,
waited for in a thread) to its commit, and one batch of an inbox at a time has it
(the inbox's turn, waited for on the loop): the statements of its events then never
wait, and with a sync engine run on the event loop's thread (a trip to a thread costs
more than they do); only the commit (one fsync) goes to a thread. On PostgreSQL each
lane's batch is a transaction of its own; its mark rows lock concurrent deliveries of
the same events until it commits.

A plain def handler's calls in a batch are made in runs, in a worker thread (decision
0041): there the event's savepoint, claim and release are made in that thread too
(:meth:`Batch.begin_here`, :meth:`_BatchMark.commit_here`), the batch held by the
run, so that a run of events costs one trip to the thread, not one per event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tidings.inbox._sides import (
    Side,
    Sides,
    claim_in_session,
    claim_in_session_async,
    raw_sqlite,
    shielded,
)
from tidings.inbox._store import Plan, close_quietly, commit_and_close

__all__ = ["BATCH_SECONDS", "Batch"]

# A batch is committed once it has been open this long (seconds), however few its
# events: on SQLite it holds the file's write lock, which others wait for.
BATCH_SECONDS = 0.2


# Statements that write nothing of a handler's (see Batch.writes).
_NOT_WRITES = ("SELECT", "SAVEPOINT", "RELEASE", "ROLLBACK")


class Batch:
    """One lane's open transaction on one side of an inbox (see the module)."""

    __slots__ = (
        "_conn", "_turn", "_writes", "count", "deadline", "immediate", "limit", "side",
        "sides", "stamp", "statements",
    )  # fmt: skip

    def __init__(self, sides: Sides, side: Side, limit: int, turn: asyncio.Lock | None) -> None:
        self.sides, self.side, self.limit, self._turn = sides, side, limit, turn
        # SQLite: the file's write lock is taken at the start, one batch at a time.
        self.immediate = turn is not None
        self._conn: Any = None  # Connection | AsyncConnection, in a transaction
        self.deadline = 0.0
        self.count = 0  # events committed into the batch
        self.statements = 0  # that wrote, run through SQLAlchemy (PostgreSQL)
        self.stamp: Any = None
        self._writes: Callable[[], int] = lambda: self.statements

    async def open(self) -> None:
        """Connect and begin (on SQLite, waiting for the inbox's turn, then the lock)."""
        if self._turn is not None:
            await self._turn.acquire()
        try:
            if self.side.is_async:
                self._conn = await _begin_async(self.sides, self.side, immediate=self.immediate)
            else:
                threads = self.sides.threads
                self._conn = await threads.run(
                    _begin_sync, self.side, self.immediate, undo=close_quietly
                )
        except BaseException:
            self._release()
            raise
        self.deadline = asyncio.get_running_loop().time() + BATCH_SECONDS
        self.stamp = self.side.stamp()  # handled_at of the batch's marks
        if self.immediate:  # SQLite: the driver counts the rows written
            raw = await self._conn.get_raw_connection() if self.side.is_async else None
            driver = raw.driver_connection if raw else self._conn.connection.dbapi_connection
            self._writes = lambda: int(driver.total_changes)
        else:
            conn = self._conn.sync_connection if self.side.is_async else self._conn
            sa.event.listen(conn, "before_cursor_execute", self._counted)

    def _counted(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip()[:9].upper()
        if not verb.startswith(_NOT_WRITES):
            self.statements += 1

    def writes(self) -> int:
        """Statements that wrote on the batch's connection so far (SQLite: rows)."""
        return self._writes()

    @property
    def full(self) -> bool:
        return self.count >= self.limit or asyncio.get_running_loop().time() >= self.deadline

    def takes(self, plan: Plan) -> bool:
        """Whether ``plan``'s deliveries go into this batch: those of its side, and for
        an inline side (SQLite), every ``async def`` handler's."""
        session = plan.session
        return session is self.side or (
            self.side.inline and session is not None and session.is_async
        )

    async def begin(self, plan: Plan, event_id: str) -> _BatchMark | None:
        """A savepoint with ``event_id``'s mark in it and a session on it for the
        handler; None if the event was marked already (here or committed). On SQLite
        (the lock held, so no statement waits) a sync session's statements run here,
        and an async one's on an inline engine (:mod:`tidings.inbox._inline`)."""
        side = self.side
        if not side.is_async:
            if self.immediate:
                return self.begin_here(plan, event_id)
            return await self.sides.threads.run(self.begin_here, plan, event_id)
        session = side.maker(bind=self._conn, join_transaction_mode="create_savepoint")
        if side.inline:  # no statement of the claim goes through the asyncio adapter
            fresh = _claim_inline(side, session.sync_session, plan.consumer, event_id, self.stamp)
        else:
            fresh = await claim_in_session_async(side, session, plan.consumer, event_id, self.stamp)
        return _BatchMark(self, session, is_async=True) if fresh else None

    def begin_here(self, plan: Plan, event_id: str) -> _BatchMark | None:
        """:meth:`begin` of a sync side's batch, in the calling thread (the loop's when
        no statement can wait, else one the batch's connection may wait in)."""
        session = self.side.maker(bind=self._conn, join_transaction_mode="create_savepoint")
        fresh = claim_in_session(self.side, session, plan.consumer, event_id, self.stamp)
        return _BatchMark(self, session, is_async=False) if fresh else None

    def room(self) -> bool:
        """Whether the batch may take another event (:attr:`full`'s contrary, from any
        thread: the loop's clock is ``time.monotonic``)."""
        return self.count < self.limit and time.monotonic() < self.deadline

    async def commit(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if self.side.is_async:
                try:
                    if self.side.inline:  # the fsync in a thread, not on the loop
                        raw = await conn.get_raw_connection()
                        await self.sides.threads.run(raw_sqlite(raw.driver_connection).commit)
                    await conn.commit()  # (inline: nothing left to commit)
                finally:
                    await shielded(self.side, conn.close())
            else:
                await self.sides.threads.run(commit_and_close, conn)
        finally:
            self._release()

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is None:
                return
            if self.side.is_async:
                await shielded(self.side, conn.close())  # rolls back
            else:
                closing = self.sides.threads.submit(close_quietly, conn)
                await asyncio.shield(asyncio.wrap_future(closing))
        finally:
            self._release()

    def _release(self) -> None:
        turn, self._turn = self._turn, None  # once
        if turn is not None:
            turn.release()

    async def run(self, call: Any, *args: Any) -> Any:
        """``call(*args)``, a sync statement on the batch's connection: here when no
        statement can wait (SQLite, lock held), else in a thread."""
        if self.immediate:
            return call(*args)
        return await self.sides.threads.run(call, *args)


class _BatchMark:
    """One event's savepoint in a batch: ``session`` for its handler. ``used``, once
    committed: whether the handler wrote through its session; if not, its effect is
    outside the database, and the middleware commits the batch at once (such an
    effect is repeated once at most, as without a batch)."""

    __slots__ = ("_batch", "_before", "_sync", "session", "used")

    def __init__(self, batch: Batch, session: Any, *, is_async: bool) -> None:
        self._batch, self.session = batch, session
        # The sync Session committed or closed here: a sync handler's, or the one in an
        # inline AsyncSession, whose savepoint statements need no await (plain SQL on
        # the sqlite3 connection); None: an AsyncSession, awaited.
        inline = batch.side.inline
        self._sync = session.sync_session if inline else None if is_async else session
        self._before = batch.writes()  # after the claim
        self.used = True

    async def discard(self, *, cancelled: bool) -> None:
        """Roll back to the event's savepoint: no effect, no mark; the batch goes on."""
        if self._sync is None:
            await shielded(self._batch.side, self.session.close())
        elif not cancelled:  # cancelled: the batch is given up as a whole
            await self._batch.run(self._sync.close)

    def discard_here(self) -> None:
        """:meth:`discard` of a sync session, in the calling thread."""
        self.session.close()

    async def commit(self) -> bool:
        """Release the savepoint (its effects and mark stay in the batch)."""
        session, sync = self.session, self._sync
        if sync is session:  # a sync handler's Session
            await self._batch.run(self.commit_here)
            return True
        try:
            if sync is None or _pending(sync):
                await session.commit()  # a flush of ORM objects: through the adapter
            else:
                sync.commit()  # inline: nothing pending, plain SQL that never waits
        except BaseException:
            await self.discard(cancelled=False)
            raise
        self._counted()
        if sync is None:
            await session.close()
        else:
            sync.close()  # nothing open: no statement
        return True

    def commit_here(self) -> None:
        """:meth:`commit` of a sync session, in the calling thread; if it fails, the
        savepoint is rolled back and the error raised."""
        try:
            self.session.commit()  # flushes what is pending
        except BaseException:
            self.session.close()
            raise
        self._counted()
        self.session.close()  # nothing open: no statement

    def _counted(self) -> None:
        self.used = self._batch.writes() > self._before
        self._batch.count += 1


def _pending(session: Any) -> bool:
    return bool(session.new or session.dirty or session.deleted)


def _claim_inline(side: Side, sync: Any, consumer: str, event_id: str, stamp: Any) -> bool:
    """:func:`claim_in_session` in an inline AsyncSession's Session: its savepoint
    (plain SQL) and the mark on the sqlite3 connection, nothing awaited."""
    try:
        pooled = sync.connection().connection
        fresh = side.insert_on(raw_sqlite(pooled.driver_connection), consumer, event_id, stamp)
    except BaseException:
        sync.close()
        raise
    if not fresh:
        sync.close()
    return fresh


def _begin_sync(side: Side, immediate: bool) -> Any:
    conn = side.engine.connect()
    try:
        conn.begin()
        if immediate:
            _begin_immediate(conn.connection.dbapi_connection)
    except BaseException:
        conn.close()
        raise
    return conn


def _begin_immediate(dbapi: Any) -> None:
    # pysqlite begins a transaction only before a write, and a SAVEPOINT outside one
    # would be the transaction itself (its RELEASE would commit): begin it here, and
    # take the write lock with it. A driver set up to emit BEGIN itself has done so.
    if not getattr(dbapi, "in_transaction", False):
        cursor = dbapi.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
        finally:
            cursor.close()


async def _begin_async(sides: Sides, side: Side, *, immediate: bool) -> Any:
    conn = side.engine.connect()
    await conn.__aenter__()
    try:
        await conn.begin()
        if immediate:
            raw = await conn.get_raw_connection()
            if getattr(raw.driver_connection, "in_transaction", False):
                pass  # a driver set up to emit BEGIN itself has done so
            elif side.inline:  # it may wait for another process: in a thread
                await sides.threads.run(_begin_immediate, raw_sqlite(raw.driver_connection))
            else:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        await shielded(side, conn.close())
        raise
    return conn
