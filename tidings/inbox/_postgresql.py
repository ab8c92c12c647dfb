"""The inbox on PostgreSQL: insert the mark first, in the transaction the handler
works in (``INSERT ... ON CONFLICT DO NOTHING``: check and claim in one round trip),
and hold it while the handler runs: a concurrent delivery of the same event, in any
process, waits on that row and then finds it."""

from __future__ import annotations

from typing import Any

from tidings.inbox._sides import Side, claim_in_session, claim_in_session_async, shielded
from tidings.inbox._store import InboxStore, Mark, Plan, close_quietly, commit_and_close

__all__ = ["PostgreSQLStore"]


class PostgreSQLStore(InboxStore):
    """Claim first: the mark is in the handler's transaction from the start."""

    async def begin(self, plan: Plan, event_id: str) -> Mark | None:
        side = plan.session or plan.marks
        if side.is_async:
            if plan.session is None:
                return await _ConnectionClaim.begin(side, plan, event_id)
            return await _SessionClaim.begin(side, plan, event_id)
        # A Session for the handler, or a raw connection for the mark alone; if the
        # wait is cancelled, the thread's session or connection is closed once it
        # has returned.
        claim = _claim_in_session if plan.session else _claim_raw
        holder = await self.sides.threads.run(
            claim, side, plan.consumer, event_id, undo=close_quietly
        )
        if holder is None:
            return None
        return _ThreadClaim(self, side, holder, holder if plan.session else plan.placeholder)

    async def close(self) -> None:
        """Nothing to do: every claim gives its session or connection back."""


def _claim_in_session(side: Side, consumer: str, event_id: str) -> Any:
    session = side.maker()
    return session if claim_in_session(side, session, consumer, event_id) else None


def _claim_raw(side: Side, consumer: str, event_id: str) -> Any:
    raw = side.engine.raw_connection()
    try:
        fresh = side.insert_on(raw, consumer, event_id)
    except BaseException:
        raw.close()
        raise
    if not fresh:
        raw.close()  # rolls back
        return None
    return raw


class _ThreadClaim:
    """A claim on a sync side: a Session or raw connection, used in threads."""

    __slots__ = ("_holder", "_side", "_store", "session")
    used = True  # claimed first: whether the handler used its session is unknown

    def __init__(self, store: InboxStore, side: Side, holder: Any, shown: Any) -> None:
        self._store, self._side, self._holder, self.session = store, side, holder, shown

    async def discard(self, *, cancelled: bool) -> None:
        await self._store.discard(self._side, self._holder, cancelled=cancelled)

    async def commit(self) -> bool:
        await self._store.sides.threads.run(commit_and_close, self._holder)
        return True


class _ConnectionClaim:
    """A claim without a session on an async side: the mark alone, on a connection."""

    __slots__ = ("_conn", "session")
    used = True  # claimed first: whether the handler used its session is unknown

    def __init__(self, conn: Any, shown: Any) -> None:
        self._conn, self.session = conn, shown

    @classmethod
    async def begin(cls, side: Side, plan: Plan, event_id: str) -> _ConnectionClaim | None:
        # Entered and left as ``async with`` would (leaving closes it, rolling back
        # what was not committed, and completes even if the task is cancelled).
        conn = side.engine.connect()
        await conn.__aenter__()
        try:
            await conn.begin()
            fresh = await side.insert_async(conn, plan.consumer, event_id)
        except BaseException:
            await conn.__aexit__(None, None, None)
            raise
        if not fresh:
            await conn.__aexit__(None, None, None)
            return None
        return cls(conn, plan.placeholder)

    async def discard(self, *, cancelled: bool) -> None:
        await self._conn.__aexit__(None, None, None)

    async def commit(self) -> bool:
        try:
            await self._conn.commit()
            return True
        finally:
            await self._conn.__aexit__(None, None, None)


class _SessionClaim:
    """A claim in an AsyncSession: the handler's writes commit with the mark."""

    __slots__ = ("_side", "session")
    used = True  # claimed first: whether the handler used its session is unknown

    def __init__(self, side: Side, session: Any) -> None:
        self._side, self.session = side, session

    @classmethod
    async def begin(cls, side: Side, plan: Plan, event_id: str) -> _SessionClaim | None:
        session = side.maker()
        fresh = await claim_in_session_async(side, session, plan.consumer, event_id)
        return cls(side, session) if fresh else None

    async def discard(self, *, cancelled: bool) -> None:
        await shielded(self._side, self.session.close())  # rolls back what was not committed

    async def commit(self) -> bool:
        try:
            await self.session.commit()
            return True
        finally:
            await shielded(self._side, self.session.close())
