"""Handlers with an inbox handle each event once: redeliveries are passed and counted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.errors import ConfigError
from tidings.middleware.base import Delivery, Middleware, Next

if TYPE_CHECKING:
    from tidings.subscriber import Subscriber

__all__ = ["InboxMiddleware"]


class InboxMiddleware(Middleware):
    """For a subscriber with ``inbox=`` (a :class:`tidings.inbox.Inbox`): skip an event
    it already handled (``Stats.duplicates``), else give the handler ``ctx.session`` and
    commit its transaction with the event's mark; see :mod:`tidings.inbox`.

    Subscribers without an inbox pass straight through. It belongs inside
    :class:`~tidings.middleware.Retry`, so that each attempt is its own transaction: a
    failed attempt is rolled back, effect and mark, before the next one.
    """

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        inbox = delivery.subscriber.inbox
        if inbox is None:
            await call_next(delivery)
            return
        # Duck-typed, so that importing the middleware does not import SQLAlchemy.
        handle = getattr(inbox, "handle", None)
        if handle is None:
            raise ConfigError(
                f"subscriber {delivery.subscriber.name}: inbox= takes a tidings.Inbox, "
                f"got {inbox!r}"
            )
        await handle(delivery, call_next)

    def wraps(self, subscriber: Subscriber) -> bool:
        return subscriber.inbox is not None  # the others pass straight through

    def __repr__(self) -> str:
        return "InboxMiddleware()"
