"""The inbox on SQLite: look the mark up, handle, insert the mark just before the
commit (the file's one write lock is not held while a handler runs)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy.orm import Session

from tidings.inbox._sides import Side, Sides, shielded
from tidings.inbox._store import InboxStore, Mark, Plan, close_quietly

__all__ = ["SQLiteStore"]


class SQLiteStore(InboxStore):
    """Check first, mark last. The lookup is a read (on the event loop's thread in WAL
    mode, as readers never wait); the mark goes in the handler's session's transaction
    just before its commit if the handler used it, else on its own, the marks of
    deliveries finishing together in one transaction (one fsync). If another delivery
    committed the mark in between, this one's transaction is rolled back."""

    def __init__(self, sides: Sides) -> None:
        super().__init__(sides)
        self._reader: Any = None  # a connection for lookups on the loop (False: not WAL)
        self._pending: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._writing: asyncio.Task[None] | None = None
        self._turn: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def turn(self) -> asyncio.Lock:
        """One lane's batch at a time holds the file's write lock: the others wait
        here, on the loop, not in threads (where they could take every thread the
        holder's handlers need)."""
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn[0] is not loop:  # a lock serves one loop
            self._turn = (loop, asyncio.Lock())
        return self._turn[1]

    async def begin(self, plan: Plan, event_id: str) -> Mark | None:
        if await self._seen(plan.marks, plan.consumer, event_id):
            return None
        session = None if plan.session is None else plan.session.maker()  # connects on use
        return _MarkLast(self, plan, event_id, session)

    async def _seen(self, side: Side, consumer: str, event_id: str) -> bool:
        """Whether the mark is there. In WAL mode a reader never waits for a writer:
        the lookup runs on the loop's thread, which costs less than a trip to another
        thread (see docs/decisions/0002-fetch-on-the-event-loop.md)."""
        if side.is_async:
            async with side.engine.connect() as conn:
                return await side.seen_async(conn, consumer, event_id)
        reader = self._reader if self._reader is not None else self._open_reader(side)
        if reader is False:
            return await self.sides.threads.run(self._seen_sync, side, consumer, event_id)
        # fetchall: the statement runs to its end, so no read snapshot stays open.
        return bool(reader.execute(side.check, (consumer, event_id)).fetchall())

    def _open_reader(self, side: Side) -> Any:
        """A connection of this inbox's own for lookups on the loop, if the file is in
        WAL mode (else False: lookups go to threads, as they may wait for a writer)."""
        raw = side.engine.raw_connection()
        try:
            (mode,) = raw.cursor().execute("PRAGMA journal_mode").fetchone()
        except BaseException:
            raw.close()
            raise
        if str(mode).lower() != "wal":
            raw.close()
            self._reader = False
            return False
        raw.detach()  # not the pool's any more: closed by close()
        self._reader = raw.dbapi_connection
        return self._reader

    def _seen_sync(self, side: Side, consumer: str, event_id: str) -> bool:
        raw = side.engine.raw_connection()
        try:
            return side.seen_on(raw, consumer, event_id)
        finally:
            raw.close()

    async def mark(self, side: Side, consumer: str, event_id: str) -> bool:
        """Insert and commit a mark on its own; False if it was there. With a sync
        engine, marks of deliveries finishing together share one transaction (one
        fsync): one write is in flight, and what arrives meanwhile goes in the next."""
        if side.is_async:
            async with side.engine.begin() as conn:
                return await side.insert_async(conn, consumer, event_id)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((consumer, event_id, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_pending(side))
        # Shielded: a cancelled delivery leaves its mark to the batch (the handler did
        # return: marking it is right).
        return await asyncio.shield(done)

    async def _write_pending(self, side: Side) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                fresh = await self.sides.threads.run(
                    self._write_marks, side, [(c, e) for c, e, _ in batch], side.stamp()
                )
            except BaseException as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                        done.exception()  # seen: a cancelled delivery may never await it
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (*_, done), was_fresh in zip(batch, fresh, strict=True):
                if not done.done():
                    done.set_result(was_fresh)

    def _write_marks(self, side: Side, marks: list[tuple[str, str]], stamp: Any) -> list[bool]:
        raw = side.engine.raw_connection()
        try:
            cursor = raw.cursor()
            fresh = []
            for consumer, event_id in marks:
                cursor.execute(side.insert, (consumer, event_id, stamp))
                fresh.append(cursor.rowcount == 1)
            cursor.close()
            raw.commit()
            return fresh
        finally:
            raw.close()  # rolls back if the commit did not happen

    async def commit_with_mark(
        self, side: Side, session: Any, consumer: str, event_id: str
    ) -> bool:
        """Insert the mark in ``session``'s open transaction and commit both; False
        (rolled back) if another delivery's mark came first."""
        if not side.is_async:
            return await self.sides.threads.run(
                _mark_and_commit_sync, side, session, consumer, event_id
            )
        try:
            conn = await session.connection()
            if not await side.insert_async(conn, consumer, event_id):
                return False  # marked meanwhile by another delivery: roll back
            await session.commit()
            return True
        finally:
            await shielded(side, session.close())

    async def close(self) -> None:
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
            self._writing = None
        if self._reader:
            close_quietly(self._reader)
        self._reader = None


def _mark_and_commit_sync(side: Side, session: Session, consumer: str, event_id: str) -> bool:
    try:
        dbapi = session.connection().connection.dbapi_connection
        if not side.insert_on(dbapi, consumer, event_id):
            return False  # marked meanwhile by another delivery: roll back
        session.commit()
        return True
    finally:
        session.close()


class _MarkLast:
    """A delivery on SQLite: its mark is inserted once the handler has returned."""

    __slots__ = ("_event_id", "_plan", "_store", "session", "used")

    def __init__(self, store: SQLiteStore, plan: Plan, event_id: str, session: Any) -> None:
        self._store, self._plan, self._event_id = store, plan, event_id
        self.session: Any = plan.placeholder if session is None else session
        self.used = session is not None

    async def discard(self, *, cancelled: bool) -> None:
        if self._plan.session is not None:
            await self._store.discard(self._plan.session, self.session, cancelled=cancelled)

    async def commit(self) -> bool:
        store, plan, event_id = self._store, self._plan, self._event_id
        side, session = plan.session, self.session
        if side is None:
            return await store.mark(plan.marks, plan.consumer, event_id)
        self.used = session.in_transaction()
        if not self.used:  # unused (or committed by the handler)
            await store.discard(side, session, cancelled=False)  # no connection: no I/O
            return await store.mark(plan.marks, plan.consumer, event_id)
        return await store.commit_with_mark(side, session, plan.consumer, event_id)
