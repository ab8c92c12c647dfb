"""Retry a failing handler in place, with exponential backoff, a cap and jitter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

from tidings.errors import ConfigError, EventError
from tidings.middleware.base import Delivery, Middleware, Next

__all__ = ["Retry"]

log = logging.getLogger("tidings.worker")


@dataclass(frozen=True)
class Retry(Middleware):
    """Call the handler again until it succeeds, waiting longer each time.

    The event's partition waits meanwhile, so per-key order holds and the event
    shows as lag. The n-th wait is ``min(max_delay, base_delay * 2**(n-1))``, times a
    random factor in ``[1 - jitter, 1]`` so that many failing workers do not retry in
    step. An EventError (a payload that cannot be decoded) is never retried: trying
    again cannot fix it. When the worker stops, the wait ends and the event stays
    uncommitted for whoever runs the group next.
    """

    base_delay: float = 0.1
    max_delay: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base_delay <= 0:
            raise ConfigError(f"Retry(base_delay=...) must be > 0, got {self.base_delay}")
        if self.max_delay < self.base_delay:
            raise ConfigError(
                f"Retry(max_delay=...) must be >= base_delay ({self.base_delay}), "
                f"got {self.max_delay}"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Retry(jitter=...) must be between 0 and 1, got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        base: float = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        return base * random.uniform(1 - self.jitter, 1)

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        while True:
            try:
                await call_next(delivery)
                return
            except EventError:
                raise
            except Exception as exc:
                delivery.stats.failed_attempts += 1
                wait = self.delay(delivery.attempt)
                event, record = delivery.event, delivery.record
                log.error(
                    "group %s: handler %s failed on %s %s (%s[%d]@%d, attempt %d): %r;"
                    " retrying in %.2fs",
                    delivery.group, delivery.subscriber.name, event.type, event.id,
                    record.topic, record.partition, record.offset, delivery.attempt, exc,
                    wait, exc_info=delivery.attempt == 1,
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(delivery.stopping.wait(), wait)
                if delivery.stopping.is_set():
                    raise asyncio.CancelledError from exc
                delivery.attempt += 1
