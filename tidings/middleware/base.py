"""What a middleware is: a wrapper around one handler call, the same on every transport."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.dead_letters import DeadLetterLog
from tidings.envelope import Event
from tidings.stats import Stats
from tidings.subscriber import Subscriber
from tidings.transport import Record

__all__ = ["SKIP", "Delivery", "Middleware", "Next", "RunCalls", "Stats", "compose", "run_part"]


@dataclass(slots=True)
class Delivery:
    """One event on its way to one subscriber of a group.

    ``attempt`` counts calls of this handler for this event (1 for the first);
    ``stopping`` is set when the worker shuts down, so that long waits can end.
    ``record`` is where the event was published, even for a replayed dead letter
    (read from the group's retry topic; ``replay_of`` then names its dead-letter
    entry). ``session`` is what the handler sees as ``ctx.session`` (set by the
    inbox middleware); the failure fields are filled in by
    :class:`~tidings.middleware.Retry`; ``dead_letters`` is the group's dead-letter
    log, for :class:`~tidings.middleware.DeadLetters`.
    """

    subscriber: Subscriber
    event: Event
    record: Record
    group: str
    stats: Stats
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: int = 1
    dead_letters: DeadLetterLog | None = None
    replay_of: str | None = None
    session: Any = None
    first_failure: float | None = None  # Unix time of the first failed attempt
    last_failure: float | None = None
    error: BaseException | None = None  # the last attempt's exception
    # Where Retry and DeadLetters report what they did ("retry", "dead_letter", with
    # attributes): the tracing middleware's span events; None when nothing listens.
    note: Callable[[str, dict[str, Any]], None] | None = None
    # A plain def handler's call in its thread, for a subscriber with a timeout (what
    # Deadline leaves running past it); None otherwise.
    thread: Future[Any] | None = None
    # Set by a middleware inside Retry to end its wait before the next attempt at once
    # (Cancellation: the event's chain was cancelled meanwhile); Retry takes it (back to
    # None) when it waits.
    wake: asyncio.Event | None = None


Next = Callable[[Delivery], Awaitable[None]]
"""The rest of the chain, as a middleware calls it: ``await call_next(delivery)``."""

SKIP: Any = object()
"""What :meth:`RunCalls.before` returns for an event that needs no call (handled)."""


class RunCalls(Protocol):
    """A middleware's part in one run of a plain ``def`` handler's calls in a thread
    (:meth:`Middleware.open_run`): ``before`` and ``after`` each call, in that thread;
    ``finish`` or ``abandon`` once, on the loop, when the run is over."""

    @property
    def count(self) -> int:
        """How many of the run's events, from the first, may be called in this run."""
        ...

    def before(self, event: Event) -> Any:
        """In the thread, before the call for ``event``: what the handler gets as
        ``ctx.session``, or :data:`SKIP` (no call: the event counts as handled). If this
        raises, the event goes through the chain on the loop with that error."""
        ...

    def after(self, ok: bool) -> bool:
        """In the thread, after the call: ``ok``, whether it returned normally (if not,
        the event goes through the chain, which sees what it raised). Whether the run
        may go on; raising makes the call a failed one."""
        ...

    async def finish(self) -> None:
        """On the loop, after the thread's run returned."""
        ...

    def abandon(self) -> None:
        """On the loop, instead of :meth:`finish`: the run's task was cancelled (the
        thread ends after the call under way)."""
        ...


class Middleware:
    """Wraps every handler call of a worker. Override :meth:`handle`::

        class Timed(Middleware):
            async def handle(self, delivery, call_next):
                started = time.perf_counter()
                try:
                    await call_next(delivery)
                finally:
                    record(delivery.subscriber.name, time.perf_counter() - started)

    Returning normally means "handled": the event's offset may then be committed.
    Raising means "not handled": the worker leaves the event uncommitted.
    """

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        """Handle ``delivery``, calling ``call_next(delivery)`` for the rest of the chain
        (the handler last); this default only does that."""
        await call_next(delivery)

    def wraps(self, subscriber: Subscriber) -> bool:
        """Whether :meth:`handle` may do anything around ``subscriber``'s calls. A worker
        leaves a middleware that answers False out of that subscriber's chain (one call
        less per event); the default is True."""
        return True

    def only_on_error(self, subscriber: Subscriber) -> bool:
        """Whether :meth:`handle` does nothing around ``subscriber``'s calls that return
        normally (nothing before ``call_next``, nothing after it returns) and acts only
        when a call raises, as :class:`~tidings.middleware.Retry` and
        :class:`~tidings.middleware.DeadLetters` do. The default is False.

        When every middleware of a handler's chain answers True, the worker calls the
        handler for a run of its partition's events one after the other, without the
        chain: a plain ``def`` handler in one thread hand-off, an ``async def`` one
        awaited in turn by one coroutine. An event whose call raised then goes through
        the chain, which sees that first attempt's error as if the call had just raised
        it. A subclass that overrides :meth:`handle` to act around every call must
        answer False.
        """
        return False

    def takes_runs(self, subscriber: Subscriber) -> bool:
        """Whether this middleware, which acts around every call of ``subscriber`` (a
        plain ``def`` handler), can do that for a run of its calls in one thread
        (:meth:`open_run`). The worker then calls that handler in runs when every other
        middleware of its chain acts only on errors and no other handler wants the same
        events. The default is False."""
        return False

    async def open_run(
        self, subscriber: Subscriber, events: Sequence[Event], stats: Stats
    ) -> RunCalls | None:
        """For a subscriber it :meth:`takes_runs` of: get ready, on the loop, for a run of
        calls for ``events`` (in their partition's order) and return this middleware's
        part in it; None: not now (the first event then goes through the chain)."""
        return None

    def wants_chain(self, event: Event) -> bool:
        """Whether the calls for ``event`` must go through the chain although
        :meth:`only_on_error` answered True: a middleware that acts around the calls of
        some events only (tracing: those of sampled traces) answers True for them, and
        the worker takes them out of its runs. Asked for every event when overridden;
        the default is False."""
        return False


def run_part(chain: Sequence[Middleware], subscriber: Subscriber) -> Middleware | None:
    """The middleware of ``chain`` that takes part in runs of ``subscriber``'s calls
    (:meth:`Middleware.takes_runs`), if it is the only one that acts around them (the
    others act only on errors); else None."""
    around = [m for m in chain if not m.only_on_error(subscriber)]
    return around[0] if len(around) == 1 and around[0].takes_runs(subscriber) else None


def compose(middleware: Sequence[Middleware], innermost: Next) -> Next:
    """One callable: ``middleware[0]`` outermost, ``innermost`` (the handler) last."""
    call = innermost
    for layer in reversed(middleware):
        call = _step(layer.handle, call)
    return call


def _step(handle: Callable[..., Awaitable[None]], call_next: Next) -> Next:
    # A plain function that returns the layer's coroutine, not a wrapping coroutine (one
    # frame less per layer per event), and not functools.partial(handle, call_next=...),
    # which copies its keywords into a new dict at every call (measured 235 ns against
    # 65, per layer, per event and subscriber). Positional, as Middleware.handle's
    # signature is documented: a layer may name its parameters as it likes.
    def step(delivery: Delivery) -> Awaitable[None]:
        return handle(delivery, call_next)

    return step
