"""Events that cannot be decoded: reported and passed, never retried."""

from __future__ import annotations

import logging

from tidings.errors import EventError
from tidings.middleware.base import Delivery, Middleware, Next, Stats
from tidings.transport import Record

__all__ = ["SkipPoison", "report_poison"]

log = logging.getLogger("tidings.worker")


def report_poison(group: str, record: Record, reason: Exception, stats: Stats) -> None:
    """Log an undecodable event with its position, and count it."""
    stats.undecodable += 1
    log.error(
        "group %s: %s[%d]@%d cannot be decoded, skipped: %s",
        group, record.topic, record.partition, record.offset, reason,
    )  # fmt: skip


class SkipPoison(Middleware):
    """A payload that does not match its registered model (an EventError) is logged
    with its position and passed, so that it never blocks its partition.

    This is the place where a dead-letter middleware takes over: it keeps such
    events, with the reason, instead of only reporting them.
    """

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        try:
            await call_next(delivery)
        except EventError as exc:
            report_poison(delivery.group, delivery.record, exc, delivery.stats)
