"""Handlers with an inbox handle each event once: redeliveries are passed and counted.

Around the handler call: skip an event the subscriber already handled, else give the
handler ``ctx.session`` and commit the event's mark with its effect (or roll both back
if it fails). How the mark is taken on each database is the inbox's
(:mod:`tidings.inbox`); importing this module does not import SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tidings.errors import ConfigError
from tidings.inbox import Inbox
from tidings.middleware.base import Delivery, Middleware, Next

if TYPE_CHECKING:
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
        event_id = delivery.event.id
        gate = await inbox.wait_turn(plan, event_id)
        try:
            fresh = await self._once(inbox, plan, delivery, call_next)
        finally:
            inbox.end_turn(plan, event_id, gate)
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
        return await mark.commit()

    def wraps(self, subscriber: Subscriber) -> bool:
        return subscriber.inbox is not None  # the others pass straight through

    def __repr__(self) -> str:
        return "InboxMiddleware()"
