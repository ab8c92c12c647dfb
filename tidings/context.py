"""What a handler gets besides its payload, and the causal scope of publishes.

While a handler runs, or while an HTTP request is served inside
:func:`correlation_scope`, every event published inherits the scope's
``correlationid`` and takes the scope's ``causationid``, whatever API publishes it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol, TypeVar

from tidings.envelope import Event, new_id
from tidings.progress import Throttle, check_fraction, is_progress, progress_data, progress_type
from tidings.subscriber import Subscriber
from tidings.transport import Record

__all__ = [
    "Context",
    "Handling",
    "Publisher",
    "Scope",
    "causal_scope",
    "correlation_scope",
    "current_scope",
]

T = TypeVar("T")


class Publisher(Protocol):
    """What a handler's context publishes through (a :class:`tidings.Tidings`)."""

    async def publish(self, topic: str, payload: Any, **options: Any) -> Event: ...


class Scope(NamedTuple):
    """The causality publishes inherit (a tuple: one is made per handled event)."""

    correlationid: str
    causationid: str | None


# The handler call under way: (group, subscriber, record, event). The worker sets one
# per call, a plain tuple of what it has at hand (cheap to make); its Scope is made only
# when a handler publishes, its coordinates only when something is logged (tidings.logs).
Handling = tuple[str, Subscriber, Record, Event]

# A Scope (correlation_scope), or the handler call under way.
causal_scope: ContextVar[Scope | Handling | None] = ContextVar("tidings_scope", default=None)


def current_scope() -> Scope | None:
    """The causal scope publishes happen in now, if any."""
    value = causal_scope.get()
    if value is None or isinstance(value, Scope):
        return value
    event = value[3]
    return Scope(event.correlationid or event.id, event.id)


@contextmanager
def correlation_scope(
    correlation_id: str | None = None, causation_id: str | None = None
) -> Iterator[Scope]:
    """Publish everything inside under one correlation id (new if not given)."""
    scope = Scope(correlation_id or new_id(), causation_id)
    token = causal_scope.set(scope)
    try:
        yield scope
    finally:
        causal_scope.reset(token)


class Context:
    """The handled event and where it came from; publishes inherit its causality."""

    __slots__ = (
        "_app",
        "_loop",
        "_throttle",  # of this call's progress reports; set by the first (not per call)
        "attempt",
        "event",
        "group",
        "offset",
        "partition",
        "read_version",
        "session",
        "topic",
    )

    def __init__(
        self,
        app: Publisher,
        event: Event,
        *,
        topic: str,
        partition: int,
        offset: int,
        group: str,
        attempt: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
        session: Any = None,
        read_version: int | None = None,
    ) -> None:
        self._app = app
        self._loop = loop or asyncio.get_running_loop()
        self.event = event
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.group = group
        self.attempt = attempt
        # With an inbox on a database: the SQLAlchemy session whose transaction holds
        # the inbox mark; what the handler writes through it commits with the mark.
        self.session = session
        # The version of the payload the handler got: the event's own dataversion
        # (``event.dataversion``, as written), or the one its upcasters lead to.
        self.read_version = event.dataversion if read_version is None else read_version

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def subject(self) -> str | None:
        return self.event.subject

    @property
    def correlationid(self) -> str:
        return self.event.correlationid or self.event.id

    async def publish(self, topic: str, payload: Any, **options: Any) -> Event:
        """Publish as a consequence of the handled event (sets correlation and causation)."""
        options.setdefault("correlation_id", self.correlationid)
        options.setdefault("causation_id", self.event.id)
        return await self._app.publish(topic, payload, **options)

    def publish_sync(self, topic: str, payload: Any, **options: Any) -> Event:
        """:meth:`publish` for synchronous handlers (they run in a worker thread), in
        the handler's context (its causal scope, its trace context)."""
        return self._on_loop(self.publish(topic, payload, **options))

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the worker's loop from a handler's thread, in the handler's
        context (its causal scope, its trace context), and wait for its result."""
        context = contextvars.copy_context()

        async def in_context() -> T:
            return await self._loop.create_task(work, context=context)

        return asyncio.run_coroutine_threadsafe(in_context(), self._loop).result()

    @staticmethod
    def clock() -> float:
        """When progress reports are due: the monotonic clock (a test may set another)."""
        return time.monotonic()

    async def progress(self, fraction: float, note: str = "") -> Event | None:
        """Report how far the handler got with this event (``fraction`` from 0 to 1):
        publish a ``<type>.progressed`` event (:mod:`tidings.progress`), unless one went
        less than the subscriber's ``progress_every`` seconds ago (a final 1.0 always
        goes); return it, or None if throttled. Of a progress event, none is reported."""
        return await self._progress(check_fraction(fraction), str(note), self._subscriber())

    def progress_sync(self, fraction: float, note: str = "") -> Event | None:
        """:meth:`progress` for synchronous handlers (they run in a worker thread)."""
        return self._on_loop(
            self._progress(check_fraction(fraction), str(note), self._subscriber())
        )

    def _subscriber(self) -> Subscriber | None:
        """The subscriber whose call handles this event (from the causal scope the
        worker sets per call: a Context does not carry it, one field less per call)."""
        scope = causal_scope.get()
        # By id, not `is`: a retry reads the event afresh.
        if isinstance(scope, tuple) and not isinstance(scope, Scope) and scope[3].id == self.id:
            return scope[1]
        return None

    async def _progress(self, fraction: float, note: str, sub: Subscriber | None) -> Event | None:
        event = self.event
        if is_progress(event.type):
            return None  # a handler of every type must not report progress of progress
        throttle: Throttle | None = getattr(self, "_throttle", None)
        if throttle is None:
            throttle = self._throttle = Throttle(sub.progress_every if sub else 1.0)
        if not throttle.due(fraction, self.clock()):
            return None
        topic = (sub.progress_topic if sub else None) or self.topic
        data = progress_data(fraction, note, event.id, self.group, sub.name if sub else "")
        # Its partition is fixed (the handled event's key, else its id): reports in order.
        key = event.key or event.id
        return await self.publish(
            topic, data, type=progress_type(event.type), subject=event.subject, key=key
        )

    def __repr__(self) -> str:
        return (
            f"Context({self.event.type} {self.event.id} {self.topic}[{self.partition}]"
            f"@{self.offset} group={self.group} attempt={self.attempt})"
        )
