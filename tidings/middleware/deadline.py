"""A time limit on each handler call: ``@app.subscriber(..., timeout=30.0)``.

An ``async def`` handler past its subscriber's ``timeout`` is cancelled; a plain
``def`` one, which runs in a worker thread and cannot be stopped, is left running and
its result (or error) discarded when it ends. Either way the attempt failed with
:class:`~tidings.errors.HandlerTimeout`: :class:`~tidings.middleware.Retry` calls again
or gives up, :class:`~tidings.middleware.DeadLetters` writes it, and the partition
moves on. The innermost middleware, inside the inbox: a timed-out call's transaction
is rolled back as a failed one's (docs/decisions/0031-slow-consumers.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from typing import Any

from tidings.errors import ConfigError, HandlerTimeout
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.subscriber import Subscriber

__all__ = ["MAX_ABANDONED", "Deadline"]

log = logging.getLogger("tidings.worker")

MAX_ABANDONED = 8
"""Threads a worker leaves running past their deadline at once, by default: a quarter
of its default thread pool (``Worker(sync_threads=32)``)."""


class Deadline(Middleware):
    """Fails a call that runs past its subscriber's ``timeout`` (see the module's
    docstring). Subscribers without a timeout pass it by (it is left out of their chain).

    ``max_abandoned`` bounds the plain ``def`` calls left running past their deadline
    at once (they hold threads of the worker's pool). Past it, a timed-out call is
    waited for instead of abandoned: its partition waits, as without a timeout, and an
    error is logged, rather than the pool running out of threads for every handler.
    The call still counts as timed out, and its result is discarded.
    """

    def __init__(self, max_abandoned: int = MAX_ABANDONED) -> None:
        if (
            isinstance(max_abandoned, bool)
            or not isinstance(max_abandoned, int)
            or max_abandoned < 0
        ):
            raise ConfigError(
                f"Deadline(max_abandoned=...) must be an int >= 0, got {max_abandoned!r}"
            )
        self.max_abandoned = max_abandoned
        self.abandoned: set[Future[Any]] = set()  # calls still running past their deadline

    def wraps(self, subscriber: Subscriber) -> bool:
        return subscriber.timeout is not None

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        timeout = delivery.subscriber.timeout  # set: wraps() takes only such subscribers
        assert timeout is not None
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                await call_next(delivery)
        except TimeoutError:
            if not scope.expired():
                raise  # the handler's own timeout: an ordinary error
        else:
            if not scope.expired():
                return
            # A handler that swallowed its cancellation and returned late: timed out all
            # the same (raising here rolls its inbox transaction back).
        delivery.stats.timed_out += 1
        thread, abandoned = delivery.thread, False
        if thread is not None and not thread.done():
            abandoned = await self._abandon(thread, delivery, timeout)
        event = delivery.event
        raise HandlerTimeout(
            delivery.subscriber.name, f"{event.type} {event.id}", timeout, abandoned=abandoned
        )

    async def _abandon(self, thread: Future[Any], delivery: Delivery, timeout: float) -> bool:
        """Leave ``thread`` running, or, past ``max_abandoned``, wait for it; whether
        it was left running."""
        where = f"handler {delivery.subscriber.name} of group {delivery.group}"
        if len(self.abandoned) >= self.max_abandoned:
            log.error(
                "%s still running after %g s; %d calls are already left running past "
                "their deadline (Deadline(max_abandoned=%d)): waiting for this one, its "
                "result will be discarded",
                where, timeout, len(self.abandoned), self.max_abandoned,
            )  # fmt: skip
            await asyncio.wait([asyncio.wrap_future(thread)])
            return False
        log.warning("%s still running after %g s; its result will be discarded", where, timeout)
        self.abandoned.add(thread)
        session, since = delivery.session, time.monotonic()

        def finished(done: Future[Any]) -> None:  # in the handler's thread
            if session is not None:
                # What it wrote after its transaction was rolled back is never committed.
                _close_quietly(session)
            late = time.monotonic() - since + timeout
            log.warning("%s finished after %.1f s; its result was discarded", where, late)
            self.abandoned.discard(done)  # one set operation: atomic, the loop only counts

        thread.add_done_callback(finished)
        return True


def _close_quietly(session: Any) -> None:
    try:
        session.close()
    except Exception:
        log.warning("closing an abandoned handler's session failed", exc_info=True)
