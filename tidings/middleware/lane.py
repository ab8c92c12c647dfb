"""Work that a run of one lane's deliveries holds open together, and commits before
the worker may commit their offsets (the inbox's batches: :mod:`tidings.inbox`).

A worker handles each partition's events in order, in a lane of its own. While it
works through a run of one lane's events, it sets :data:`lane_work` to that lane's
:class:`LaneWork`: a middleware may then leave something open across deliveries
(one database transaction for their effects and marks) instead of committing each
event's on its own. The worker commits the offsets of those events only once the
open work was committed (:meth:`LaneWork.settle`): when the lane has nothing more
waiting, when the open work says it is :attr:`~Open.full`, and when the group stops;
and the open work is committed at its deadline even while the lane is in another
subscriber's call, which may wait for what it holds.
If that commit fails, the events are handled again; if the lane's task is cancelled,
the open work is discarded (:meth:`LaneWork.abandon`) and their offsets stay as
they were.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import Protocol

__all__ = ["LaneWork", "Open", "lane_work"]

log = logging.getLogger("tidings.worker")


class Open(Protocol):
    """What a middleware leaves open in a lane's work."""

    @property
    def full(self) -> bool:
        """Whether it holds enough: commit it after the current event."""
        ...

    @property
    def deadline(self) -> float:
        """When (the loop's time) to commit it even while the lane is busy elsewhere."""
        ...

    async def commit(self) -> None:
        """Commit it (on failure, nothing of it may have taken effect)."""
        ...

    async def discard(self) -> None:
        """Give it up: nothing of it takes effect."""
        ...


class LaneWork:
    """The open work of one lane's run of deliveries (at most one thing at a time).

    What is open is committed by the worker between events (:meth:`settle`), by the
    middleware (:meth:`flush`), and at its ``deadline`` if the lane is then not in a
    delivery that uses it (``busy``): a lane may be in the call of another subscriber,
    which may wait for what the open work holds (on SQLite, the file's write lock)."""

    __slots__ = ("_committing", "_timer", "busy", "failed", "open")

    def __init__(self) -> None:
        self.open: Open | None = None
        self.busy = False  # a delivery that uses the open work is under way
        # A commit that failed since the worker last settled: the effects of events
        # it handled since then may be gone, and they are to be handled again.
        self.failed: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._committing: asyncio.Task[None] | None = None  # a commit at the deadline

    def hold(self, held: Open) -> None:
        """Leave ``held`` open (nothing else is), to be committed by its deadline."""
        self.open = held
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(held.deadline, self._due)

    def leave(self) -> None:
        """The delivery that used the open work is over: if its deadline passed
        meanwhile, commit it now (the lane may go on to another subscriber's call)."""
        self.busy = False
        if self.open is not None and self._timer is None:
            self._due()

    def _due(self) -> None:
        self._timer = None
        if self.open is not None and not self.busy and self._committing is None:
            self._committing = asyncio.get_running_loop().create_task(self._commit_due())

    async def _commit_due(self) -> None:
        try:
            await self._commit()
        except Exception:
            log.warning("a lane's open work failed to commit (handled again)", exc_info=True)
        finally:
            self._committing = None

    @property
    def holding(self) -> bool:
        """Whether some handled events' effects are not committed yet."""
        return self.open is not None

    @property
    def full(self) -> bool:
        return self.open is not None and self.open.full

    async def flush(self) -> None:
        """Commit what is open (after a commit at the deadline under way). If that
        fails, it is discarded, and the error raised and kept for :meth:`settle`."""
        if self._committing is not None:
            await asyncio.shield(self._committing)  # its failure is kept in .failed
        await self._commit()

    async def _commit(self) -> None:
        held, self.open = self.open, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if held is None:
            return
        try:
            await held.commit()
        except BaseException as exc:
            self.failed = exc
            await asyncio.shield(self._discard(held))
            raise

    async def settle(self) -> None:
        """What the worker calls before committing the offsets of the events handled
        since it last did: commit what is open; raise if that, or any commit since,
        failed (those events are to be handled again)."""
        try:
            await self.flush()
        finally:
            failed, self.failed = self.failed, None
        if failed is not None:
            raise failed

    async def give_up(self, exc: BaseException) -> None:
        """What is open is in an unknown state (a savepoint in it could not be rolled
        back): discard it, and keep ``exc`` for :meth:`settle`, so that the events
        handled since the worker last settled are handled again."""
        self.failed = exc
        await self.abandon()

    async def abandon(self) -> None:
        """Discard what is open: its events' effects do not take place."""
        held, self.open = self.open, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if held is not None:
            await asyncio.shield(self._discard(held))

    @staticmethod
    async def _discard(held: Open) -> None:
        try:
            await held.discard()
        except Exception:
            log.warning("discarding a lane's open work failed", exc_info=True)


# The lane's work while the worker hands a lane's events through the middleware (set
# in the lane's task; None elsewhere, e.g. for a middleware called on its own).
lane_work: ContextVar[LaneWork | None] = ContextVar("tidings_lane_work", default=None)
