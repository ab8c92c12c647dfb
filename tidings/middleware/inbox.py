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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from tidings.errors import ConfigError
from tidings.inbox import Inbox
from tidings.middleware.base import SKIP, Delivery, Middleware, Next, RunCalls, Stats
from tidings.middleware.lane import LaneWork, lane_work

if TYPE_CHECKING:
    from tidings.envelope import Event
    from tidings.inbox._batch import Batch, _BatchMark
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
        batch = None
        if work is not None:
            batch = await self._batch(inbox, plan, work, sub, delivery.replay_of)
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
    async def _batch(
        inbox: Inbox, plan: Plan, work: LaneWork, sub: Subscriber, replay_of: str | None
    ) -> Batch | None:
        """The lane's batch for a delivery to ``sub``: the open one, or a new one
        (committing what else the lane holds first: it may hold the write lock this one
        needs); None if the delivery is not batched. A replayed dead letter
        (``replay_of``) is not: its entry is marked resolved once the delivery returns,
        which must find its effect committed."""
        held = work.open
        # Nor is a plain def handler's with a timeout: left running past it, its thread
        # might still write through a session on the batch's connection.
        batches = (
            inbox.batches(plan) and replay_of is None and (sub.timeout is None or sub.is_async)
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
                try:
                    await mark.discard(cancelled=isinstance(exc, asyncio.CancelledError))
                except Exception as undone:
                    # The event's savepoint was not rolled back: its mark may be in the
                    # batch without its effect, so none of the batch is committed.
                    await work.give_up(undone)
                    exc.add_note(f"rolling its savepoint back failed too: {undone!r}")
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

    def takes_runs(self, subscriber: Subscriber) -> bool:
        """A plain def handler with a session, in a lane's batch: a run of its calls in
        one thread, the claims and savepoints in that thread (decision 0041)."""
        return (
            isinstance(subscriber.inbox, Inbox)
            and subscriber.takes_context
            and not subscriber.is_async
            and subscriber.timeout is None
        )

    async def open_run(
        self, subscriber: Subscriber, events: Sequence[Event], stats: Stats
    ) -> RunCalls | None:
        inbox = subscriber.inbox
        work = lane_work.get()
        if work is None or not isinstance(inbox, Inbox):
            return None
        plan = inbox.plan(subscriber)
        if not inbox.ready:
            await inbox.prepare()
        batch = await self._batch(inbox, plan, work, subscriber, None)
        if batch is None:
            return None
        # Each event's turn, as wait_turn takes it, without waiting: the run ends
        # before an event handled elsewhere in this process (or twice in the run).
        turns = []
        for event in events:
            gate = inbox.take_turn(plan, event.id)
            if gate is None:
                break
            turns.append((event.id, gate))
        if not turns:
            work.leave()
            return None
        return _InboxRun(subscriber, inbox, plan, work, batch, turns, stats)

    def __repr__(self) -> str:
        return "InboxMiddleware()"


class _InboxRun:
    """The inbox's part in a run of a plain def handler's calls in one thread: each
    event's savepoint, claim and release in that thread (:meth:`Batch.begin_here`),
    the lane's batch held by this run (``work.busy``) until :meth:`finish`."""

    def __init__(
        self,
        sub: Subscriber,
        inbox: Inbox,
        plan: Plan,
        work: LaneWork,
        batch: Batch,
        turns: list[tuple[str, asyncio.Event]],
        stats: Stats,
    ) -> None:
        self.sub, self.inbox, self.plan, self.work, self.batch = sub, inbox, plan, work, batch
        self.turns, self.stats = turns, stats
        self.count = len(turns)
        self.mark: _BatchMark | None = None  # the event under way's savepoint
        self.skipped: list[str] = []  # ids of events handled before
        self.unused = False  # a call left its session unused: the batch is committed

    def before(self, event: Event) -> Any:
        mark = self.batch.begin_here(self.plan, event.id)
        if mark is None:
            self.skipped.append(event.id)
            return SKIP
        self.mark = mark
        return mark.session

    def after(self, ok: bool) -> bool:
        mark, self.mark = self.mark, None
        assert mark is not None
        if not ok:
            mark.discard_here()  # no effect, no mark; the chain takes it from here
            return False
        mark.commit_here()  # if this raises, the savepoint is rolled back
        if not mark.used:  # the effect is outside the database: see _in_batch
            self.unused = True
            return False
        return self.batch.room()

    def _end_turns(self) -> None:
        for event_id, gate in self.turns:
            self.inbox.end_turn(self.plan, event_id, gate)
        self.turns = []

    def abandon(self) -> None:
        self._end_turns()
        self.work.busy = False  # the lane's work is settled or abandoned by the lane

    async def finish(self) -> None:
        self._end_turns()
        self.work.leave()
        if self.skipped:
            self.stats.duplicates += len(self.skipped)
            for event_id in self.skipped:
                log.debug(
                    "group %s: %s already handled %s; skipped",
                    self.sub.group, self.sub.name, event_id,
                )  # fmt: skip
        if self.unused:
            self.inbox.noted(self.plan, used=False)
            # If this fails, the lane's work remembers it: its events are handled again.
            with contextlib.suppress(Exception):
                await self.work.flush()
        self.inbox.delivered()
