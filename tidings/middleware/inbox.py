"""Handlers with an inbox handle each event once: redeliveries are passed and counted.

Around the handler call: skip an event the subscriber already handled, else give the
handler ``ctx.session`` and commit the event's mark with its effect (or roll both back
if it fails). How the mark is taken on each database is the inbox's
(:mod:`tidings.inbox`); importing this module does not import SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from tidings.errors import ConfigError
from tidings.inbox import Inbox
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.middleware.lane import LaneWork, lane_work

if TYPE_CHECKING:
    from tidings.inbox._batch import Batch
    from tidings.inbox._store import Plan
    from tidings.subscriber import Subscriber

__all__ = ["InboxMiddleware"]

log = logging.getLogger("tidings.inbox")


class InboxMiddleware(Middleware):
    """For a subscriber with ``inbox=`` (a :class:`tidings.inbox.Inbox`): skip an event
    it already handled (``Stats.duplicates``), else give the handler ``ctx.session`` and
    commit its transaction with the event's mark; see :mod:`tidings.inbox`.

    Subscribers without an inbox pass straight through. It belongs inside
    :class:`~tidings.middleware.Retry`, so that each attempt is its own transaction: a
    failed attempt is rolled back, effect and mark, before the next one.
    """

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        sub = delivery.subscriber
        inbox = sub.inbox
        if inbox is None:
            await call_next(delivery)
            return
        if not isinstance(inbox, Inbox):
            raise ConfigError(f"subscriber {sub.name}: inbox= takes a tidings.Inbox, got {inbox!r}")
        plan = inbox.plan(sub)
        if not inbox.ready:
            await inbox.prepare()
        work = lane_work.get()
        # The lane's batch first, then the event's turn: a lane waiting for the
        # batch's turn (SQLite) holds no event's turn that the holder may wait for.
        batch = None if work is None else await self._batch(inbox, plan, work, delivery)
        event_id = delivery.event.id
        try:
            gate = await inbox.wait_turn(plan, event_id)
            try:
                if batch is None or work is None:
                    fresh = await self._once(inbox, plan, delivery, call_next)
                else:
                    fresh = await self._in_batch(inbox, batch, work, plan, delivery, call_next)
            finally:
                inbox.end_turn(plan, event_id, gate)
        finally:
            if work is not None and batch is not None:
                work.leave()
        if not fresh:
            delivery.stats.duplicates += 1
            log.debug(
                "group %s: %s already handled %s %s; skipped",
                delivery.group, sub.name, delivery.event.type, event_id,
            )  # fmt: skip
        inbox.delivered()

    @staticmethod
    async def _once(inbox: Inbox, plan: Plan, delivery: Delivery, call_next: Next) -> bool:
        """Handle the event unless it was; True if it was handled now, its effect and
        mark committed together."""
        mark = await inbox.begin(plan, delivery.event.id)
        if mark is None:  # handled before: skip it
            return False
        delivery.session = mark.session
        try:
            await call_next(delivery)
        except BaseException as exc:
            await mark.discard(cancelled=isinstance(exc, asyncio.CancelledError))
            raise
        finally:
            delivery.session = None
        fresh = await mark.commit()
        if plan.session is not None:
            inbox.noted(plan, mark.used)
        return fresh

    @staticmethod
    async def _batch(inbox: Inbox, plan: Plan, work: LaneWork, delivery: Delivery) -> Batch | None:
        """The lane's batch for this delivery: the open one, or a new one (committing
        what else the lane holds first: it may hold the write lock this one needs);
        None if the delivery is not batched. A replayed dead letter is not: its entry
        is marked resolved once the delivery returns, which must find its effect
        committed."""
        held = work.open
        sub = delivery.subscriber
        # Nor is a plain def handler's with a timeout: left running past it, its thread
        # might still write through a session on the batch's connection.
        batches = (
            inbox.batches(plan)
            and delivery.replay_of is None
            and (sub.timeout is None or sub.is_async)
        )
        if batches and held is not None and inbox.joins(held, plan):
            work.busy = True  # from here on: no commit at its deadline under this delivery
            return cast("Batch", held)
        if held is not None:
            await work.flush()
        if not batches:
            return None
        batch = await inbox.open_batch(plan)
        work.hold(batch)
        work.busy = True
        return batch

    @staticmethod
    async def _in_batch(
        inbox: Inbox, batch: Batch, work: LaneWork, plan: Plan, delivery: Delivery, call_next: Next
    ) -> bool:
        """Handle the event unless it was, in a savepoint of the lane's batch; True
        if it was handled now (its effect and mark are in the batch, committed by the
        worker before the event's offset)."""
        try:
            mark = await batch.begin(plan, delivery.event.id)
            if mark is None:  # handled before: skip it
                return False
            delivery.session = mark.session
            try:
                await call_next(delivery)
            except BaseException as exc:
                await mark.discard(cancelled=isinstance(exc, asyncio.CancelledError))
                raise
            finally:
                delivery.session = None
            await mark.commit()
        except Exception:
            # The events before this one keep their effects: commit them now, so that
            # no transaction (on SQLite, the file's write lock) stays open while Retry
            # waits. If that fails, the worker learns it before committing offsets.
            with contextlib.suppress(Exception):
                await work.flush()
            raise
        if not mark.used:
            # Nothing written through the session: the effect is outside the database.
            # Its mark is committed at once, so that a crash repeats it once at most,
            # as without a batch, and this handler's next events are not batched.
            inbox.noted(plan, used=False)
            await work.flush()  # if this fails, the event is handled again
        return True

    def wraps(self, subscriber: Subscriber) -> bool:
        return subscriber.inbox is not None  # the others pass straight through

    def __repr__(self) -> str:
        return "InboxMiddleware()"
