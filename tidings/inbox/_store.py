"""What an inbox store is: one strategy per dialect for taking an event's mark around
its handler call (:mod:`._sqlite`, :mod:`._postgresql`), over the inbox's ways to its
database (:mod:`._sides`). No SQLAlchemy is imported here."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tidings.errors import ConfigError

if TYPE_CHECKING:
    from tidings.inbox._sides import Side, Sides

__all__ = ["InboxStore", "Mark", "NoSession", "Plan", "close_quietly", "commit_and_close"]

log = logging.getLogger("tidings.inbox")


class NoSession:
    """``ctx.session`` of a handler this inbox has no session of its kind for."""

    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(self._why)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<no session: {self._why}>"


@dataclass(frozen=True, slots=True)
class Plan:
    """How one subscriber's deliveries go through the inbox (worked out once)."""

    consumer: str
    session: Side | None  # where the handler's session comes from; None: no session
    marks: Side  # where marks go when there is no session (sync if possible)
    placeholder: NoSession | None  # ctx.session when there is no session


class Mark(Protocol):
    """One delivery's mark, begun (:meth:`InboxStore.begin`) before its handler runs."""

    @property
    def session(self) -> Any:
        """What the handler sees as ``ctx.session``."""
        ...

    @property
    def used(self) -> bool:
        """Once committed: whether the handler used its session (True if unknown)."""
        ...

    async def discard(self, *, cancelled: bool) -> None:
        """The handler failed (or was cancelled): roll back, no effect, no mark."""
        ...

    async def commit(self) -> bool:
        """The handler returned: commit its effect with the mark. False if another
        delivery of the event committed its mark first (this one is rolled back)."""
        ...


def close_quietly(closeable: Any) -> None:
    try:
        closeable.close()
    except Exception:
        log.warning("inbox: closing a session or connection failed", exc_info=True)


def commit_and_close(holder: Any) -> None:
    """Commit a Session, Connection or raw connection and close it (if the commit
    fails, closing rolls back)."""
    try:
        holder.commit()
    finally:
        holder.close()


class InboxStore(ABC):
    """How marks are taken on one dialect; :class:`~tidings.middleware.InboxMiddleware`
    calls :meth:`begin` before the handler, then the mark's ``commit`` or ``discard``."""

    def __init__(self, sides: Sides) -> None:
        self.sides = sides

    @abstractmethod
    async def begin(self, plan: Plan, event_id: str) -> Mark | None:
        """The mark of ``event_id`` for ``plan``'s handler, or None if it is there
        already (the event was handled: skip it)."""

    @abstractmethod
    async def close(self) -> None:
        """Let work in flight finish and give back what the store holds."""

    def turn(self) -> asyncio.Lock | None:
        """What a lane's batch waits for before it begins: None, lanes' batches run
        side by side (see :mod:`tidings.inbox._batch`)."""
        return None

    async def discard(self, side: Side, holder: Any, *, cancelled: bool) -> None:
        """Roll back and close ``holder`` (a session or raw connection of ``side``)."""
        if side.is_async:
            from tidings.inbox._sides import shielded

            await shielded(side, holder.close())
        elif getattr(holder, "in_transaction", None) is not None and not holder.in_transaction():
            holder.close()  # a session that never connected: no I/O
        else:
            closing = self.sides.threads.submit(close_quietly, holder)
            if not cancelled:  # a cancelled task must not wait: the thread closes it
                await asyncio.wrap_future(closing)
