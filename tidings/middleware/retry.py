"""Retry a failing handler in place, with exponential backoff, a cap and jitter."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tidings.errors import ConfigError, RetriesExhausted, undecodable
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.subscriber import RetryPolicy, Subscriber

__all__ = ["Retry"]

log = logging.getLogger("tidings.worker")

ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Retry(Middleware):
    """Call the handler again until it succeeds or the policy gives up.

    The event's partition waits meanwhile, so per-key order holds and the event shows
    as lag. The n-th wait is ``min(max_delay, base_delay * 2**(n-1))``, times a random
    factor in ``[1 - jitter, 1]`` so that many failing workers do not retry in step.

    - ``max_attempts``: calls in all (None: retry forever). With the defaults, ten
      attempts span about a minute (0.1 s doubling, capped at 30 s).
    - ``retry_on``: the exceptions worth retrying; ``never``: exceptions that go to the
      dead letters after the first failure even if they match ``retry_on``.
    - ``on_exhausted``: called (sync or async) with the delivery and the last error
      when the policy gives up, before the event is dead-lettered.

    An event that cannot be decoded (:func:`~tidings.errors.undecodable`: its bytes, or
    its payload for the handler) is never retried: trying again cannot fix it. When the
    worker stops, the wait ends and the event stays uncommitted for whoever runs the
    group next; a middleware inside may end it early (``Delivery.wake``: Cancellation
    does, for an event whose chain is cancelled). Used as a middleware, the policy of a
    subscriber that has its own (``@app.subscriber(..., retry=Retry(...))``) applies
    instead of this one's.
    """

    max_attempts: int | None = 10
    base_delay: float = 0.1
    max_delay: float = 30.0
    jitter: float = 0.5
    retry_on: ExceptionTypes = (Exception,)
    never: ExceptionTypes = ()
    on_exhausted: Callable[[Delivery, BaseException], Any] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise ConfigError(
                f"Retry(max_attempts=...) must be an int >= 1 or None (forever), "
                f"got {self.max_attempts!r}"
            )
        if self.base_delay <= 0:
            raise ConfigError(f"Retry(base_delay=...) must be > 0, got {self.base_delay}")
        if self.max_delay < self.base_delay:
            raise ConfigError(
                f"Retry(max_delay=...) must be >= base_delay ({self.base_delay}), "
                f"got {self.max_delay}"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Retry(jitter=...) must be between 0 and 1, got {self.jitter}")
        for name in ("retry_on", "never"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise ConfigError(
                    f"Retry({name}=...) takes a tuple of exception classes, e.g. "
                    f"(TimeoutError, ConnectionError), got {value!r}"
                )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        base: float = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        return base * random.uniform(1 - self.jitter, 1)

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        return isinstance(error, self.retry_on) and not isinstance(error, self.never)

    def only_on_error(self, subscriber: Subscriber) -> bool:
        return True  # it waits and calls again only after a call raised

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        policy: RetryPolicy = delivery.subscriber.retry or self
        while True:
            try:
                await call_next(delivery)
                return
            except Exception as exc:
                if undecodable(exc):  # poison: trying again cannot decode it
                    raise
                now = time.time()
                if delivery.first_failure is None:
                    delivery.first_failure = now
                delivery.last_failure = now
                delivery.error = exc
                delivery.stats.failed_attempts += 1
                retryable = policy.retries(exc)
                if not retryable or (
                    policy.max_attempts is not None and delivery.attempt >= policy.max_attempts
                ):
                    await _exhausted(policy, delivery, exc)
                    event = delivery.event
                    raise RetriesExhausted(
                        delivery.subscriber.name, f"{event.type} {event.id}", exc,
                        attempts=delivery.attempt, retryable=retryable,
                    ) from exc  # fmt: skip
                wait = policy.delay(delivery.attempt)
                delivery.stats.retries += 1
                if delivery.note is not None:
                    delivery.note(
                        "retry",
                        {
                            "tidings.attempt": delivery.attempt,
                            "error.type": type(exc).__qualname__,
                            "tidings.retry.delay_seconds": wait,
                        },
                    )
                event, record = delivery.event, delivery.record
                log.error(
                    "group %s: handler %s failed on %s %s (%s[%d]@%d, attempt %d): %r;"
                    " retrying in %.2fs",
                    delivery.group, delivery.subscriber.name, event.type, event.id,
                    record.topic, record.partition, record.offset, delivery.attempt, exc,
                    wait, exc_info=delivery.attempt == 1,
                )  # fmt: skip
                await _pause(delivery, wait)
                if delivery.stopping.is_set():
                    raise asyncio.CancelledError from exc
                delivery.attempt += 1


async def _pause(delivery: Delivery, seconds: float) -> None:
    """Wait ``seconds``, less if the worker stops or a middleware inside sets
    ``delivery.wake`` (the event's chain cancelled: its next attempt is skipped now)."""
    wake, delivery.wake = delivery.wake, None
    if wake is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(delivery.stopping.wait(), seconds)
        return
    waits = [asyncio.ensure_future(delivery.stopping.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def _exhausted(policy: RetryPolicy, delivery: Delivery, error: BaseException) -> None:
    if policy.on_exhausted is None:
        return
    try:
        result = policy.on_exhausted(delivery, error)
        if inspect.isawaitable(result):
            await result
    except Exception:
        # A broken hook must not keep the event from its dead letter.
        log.exception("group %s: the on_exhausted hook failed", delivery.group)
