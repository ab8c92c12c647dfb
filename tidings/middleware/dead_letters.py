"""The outermost middleware: what a group gives up on goes to its dead-letter topic
(:mod:`tidings.dead_letters`, where replays, poison and parking live too)."""

from __future__ import annotations

from tidings.errors import undecodable
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.subscriber import Subscriber

__all__ = ["DeadLetters"]


class DeadLetters(Middleware):
    """An event whose handler gave up (retries exhausted, or an error its policy
    never retries) or whose payload does not match its model is written to the
    group's dead-letter topic, with the reason, and counts as handled: the partition
    moves on and the event waits there for ``tidings dlq replay``.

    Without this middleware in the worker's list, such an event stays uncommitted and
    is tried again after a pause (blocking its partition).
    """

    def only_on_error(self, subscriber: Subscriber) -> bool:
        return True  # it writes only what a call raised

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        try:
            await call_next(delivery)
        except Exception as exc:
            dead = delivery.dead_letters
            if dead is None:
                raise
            poison = undecodable(exc)
            if poison:
                delivery.stats.undecodable += 1
            event = delivery.event
            entry = dead.entry(
                delivery.record, exc, reason="poison" if poison else "failed",
                attempts=delivery.attempt, first_failure=delivery.first_failure,
                last_failure=delivery.last_failure, handler=delivery.subscriber.name,
                event_id=event.id, event_type=event.type,
                correlationid=event.correlationid or event.id, replay_of=delivery.replay_of,
            )  # fmt: skip
            await dead.write(entry, delivery.stopping)
            delivery.stats.dead_lettered += 1
            if delivery.note is not None:
                delivery.note(
                    "dead_letter",
                    {
                        "error.type": type(delivery.error or exc).__qualname__,
                        "tidings.dead_letter.reason": entry.reason,
                        "tidings.attempts": delivery.attempt,
                    },
                )
