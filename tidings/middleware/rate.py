"""Rate limits and back-pressure per group: ``app.group("agents", rate=5.0, max_calls=4)``.

A limited group's calls go through a :class:`RateLimit`, which the worker puts in that
group's chains only (inside Retry, outside the inbox: docs/decisions/0034-rate-limits.md).
The limit holds over all the group's workers, on every transport, without a server of
its own: each worker takes an even share, ``rate / n`` calls per second and
``max_calls // n`` (at least 1) calls at once, where ``n`` is the number of the group's
members that hold partitions, read from the transport's group membership
(:meth:`~tidings.transport.Transport.groups`) every :data:`REFRESH_SECONDS`.

A handler whose endpoint answered 429 raises :class:`~tidings.errors.RateLimited`
(or anything with a ``retry_after`` attribute, or an HTTP client's error whose
``response`` has status 429, such as openai's ``RateLimitError``): this worker's share
of the group pauses for ``Retry-After`` seconds, then the call is made again, without
counting as a failed attempt of the retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tidings.errors import ConfigError
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.subscriber import GroupSettings, Subscriber
from tidings.transport import Transport

__all__ = ["DEFAULT_RETRY_AFTER", "REFRESH_SECONDS", "Bucket", "RateLimit", "retry_after"]

log = logging.getLogger("tidings.worker")

REFRESH_SECONDS = 2.0
"""How often a worker re-reads how many members share its group's limit."""

DEFAULT_RETRY_AFTER = 1.0
"""Seconds a 429 without a usable ``Retry-After`` pauses the group."""

MAX_RETRY_AFTER = 3600.0  # a longer Retry-After is taken as this: the event waits, as lag


class Bucket:
    """A token bucket of ``rate`` tokens per second holding at most ``capacity`` (at
    least 1), kept as the time the next token is due (the generic cell rate algorithm:
    no timer, one subtraction per call). :meth:`reserve` takes a token and says how
    long to wait for it, so concurrent callers queue in turn; ``clock`` is injectable.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.due = clock()  # when the bucket is full again (the "theoretical arrival time")
        self.rate = self.capacity = 0.0
        self.set_rate(rate, capacity)

    def set_rate(self, rate: float, capacity: float | None = None) -> None:
        """A new rate (and capacity, by default ``max(1, rate)``) from now on."""
        if not rate > 0:
            raise ConfigError(f"Bucket(rate=...) must be > 0, got {rate!r}")
        self.rate = float(rate)
        self.capacity = max(1.0, float(rate) if capacity is None else capacity)

    def reserve(self) -> float:
        """Take a token: the seconds to wait before using it (0: now)."""
        now = self.clock()
        interval = 1.0 / self.rate
        due = max(self.due, now)
        wait = due - (self.capacity - 1.0) * interval - now
        self.due = due + interval
        return wait if wait > 1e-9 else 0.0  # not a float's rounding of the interval sums

    def pause(self, seconds: float) -> None:
        """No token for ``seconds`` from now, and no burst after: tokens come at the
        rate from then on."""
        burst = (self.capacity - 1.0) / self.rate
        self.due = max(self.due, self.clock() + seconds + burst)


class RateLimit(Middleware):
    """The limits of one group (:class:`~tidings.subscriber.GroupSettings` ``rate``
    and ``max_calls``) in one worker: its share of them, a 429's pause (see the module's
    docstring). The worker makes one per limited group; others pay nothing."""

    def __init__(
        self, group: str, settings: GroupSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.group = group
        self.clock = clock
        self.resume_at = 0.0  # no call before this (clock time): a 429's pause
        self.rate = settings.rate
        self.max_calls = settings.max_calls
        self.bucket = None if self.rate is None else Bucket(self.rate, clock=clock)
        self.members = 1  # how many workers share the limits
        self.calls = 0  # calls under way in this worker
        self.most_calls = self.max_calls  # this worker's share of max_calls
        self._changed = asyncio.Condition()

    def wraps(self, subscriber: Subscriber) -> bool:
        return subscriber.group == self.group

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        while True:
            async with self._slot():
                wait = self.resume_at - self.clock()
                if self.bucket is not None:
                    wait = max(wait, self.bucket.reserve())
                await _wait(wait, delivery)
                try:
                    await call_next(delivery)
                    return
                except Exception as exc:
                    pause = retry_after(exc)
                    if pause is None:
                        raise
            delivery.stats.rate_limited += 1
            self.resume_at = max(self.resume_at, self.clock() + pause)
            if self.bucket is not None:
                self.bucket.pause(pause)  # and no burst after it
            event = delivery.event
            log.warning(
                "group %s: handler %s was rate limited on %s %s; calling again in %.1fs",
                self.group, delivery.subscriber.name, event.type, event.id, pause,
            )  # fmt: skip

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self.most_calls is None:
            yield
            return
        async with self._changed:
            await self._changed.wait_for(lambda: self.calls < (self.most_calls or 0))
            self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1
            async with self._changed:
                self._changed.notify()

    async def share(self, members: int) -> None:
        """Take this worker's share of the limits, for ``members`` workers (0: 1)."""
        members = max(1, members)
        if members == self.members:
            return
        self.members = members
        if self.rate is not None and self.bucket is not None:
            self.bucket.set_rate(self.rate / members)
        if self.max_calls is not None:
            self.most_calls = max(1, self.max_calls // members)
            async with self._changed:
                self._changed.notify_all()

    async def follow(
        self, transport: Transport, stop: asyncio.Event, every: float | None = None
    ) -> None:
        """Re-read the group's membership every ``every`` seconds (default
        :data:`REFRESH_SECONDS`) until ``stop`` is set, and take the share it gives."""
        failing = False
        while not stop.is_set():
            try:
                members = await _active_members(transport, self.group)
            except Exception as exc:
                if not failing:  # once per outage, not every few seconds
                    log.warning(
                        "group %s: cannot read its members (%r); keeping a share of 1/%d "
                        "of its rate limit", self.group, exc, self.members,
                    )  # fmt: skip
                failing = True
            else:
                failing = False
                await self.share(members)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_SECONDS if every is None else every)


async def _active_members(transport: Transport, group: str) -> int:
    """The members of ``group`` that hold partitions (those that make calls)."""
    for info in await transport.groups():
        if info.group == group:
            return sum(1 for member in info.members if member.partitions)
    return 0


async def _wait(seconds: float, delivery: Delivery) -> None:
    """Wait ``seconds``, or until the worker stops (then the event stays unhandled)."""
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(delivery.stopping.wait(), seconds)
    if delivery.stopping.is_set():
        raise asyncio.CancelledError


def retry_after(error: BaseException) -> float | None:
    """The seconds to pause after ``error`` if it says "too many requests": its
    ``retry_after`` attribute (:class:`~tidings.errors.RateLimited`), or its
    ``response``'s ``Retry-After`` header when that response has status 429 (httpx's
    HTTPStatusError, openai's RateLimitError); None for any other error."""
    value: Any = getattr(error, "retry_after", None)
    if value is None:
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) != 429:
            return None
        headers = getattr(response, "headers", None)
        value = None if headers is None else headers.get("retry-after")
    return _seconds(value)


def _seconds(value: Any) -> float:
    """A ``Retry-After`` value (seconds, or an HTTP date) as seconds from now."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = email.utils.parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = DEFAULT_RETRY_AFTER
    if seconds != seconds:  # NaN
        seconds = DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
