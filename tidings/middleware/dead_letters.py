"""The outermost middleware: what a group gives up on goes to its dead-letter topic."""

from __future__ import annotations

from tidings.errors import EventError
from tidings.middleware.base import Delivery, Middleware, Next

__all__ = ["DeadLetters"]


class DeadLetters(Middleware):
    """An event whose handler gave up (retries exhausted, or an error its policy
    never retries) or whose payload does not match its model is written to the
    group's dead-letter topic, with the reason, and counts as handled: the partition
    moves on and the event waits there for ``tidings dlq replay``.

    Without this middleware in the worker's list, such an event stays uncommitted and
    is tried again after a pause (blocking its partition).
    """

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        try:
            await call_next(delivery)
        except Exception as exc:
            queue = delivery.dead_letters
            if queue is None:
                raise
            poison = isinstance(exc, EventError)
            if poison:
                delivery.stats.undecodable += 1
            await queue.write(
                delivery.record,
                exc,
                reason="poison" if poison else "failed",
                stopping=delivery.stopping,
                delivery=delivery,
            )
            delivery.stats.dead_lettered += 1
