"""Cancelling a chain of work: what a cancellation is, how a worker learns of them, and
the middleware that stops a cancelled chain's calls and skips its later events.

``app.cancel(correlation_id=...)`` (or ``subject=``, a business key) appends a
``tidings.cancelled`` event to the topic ``_tidings.cancellations``. Every worker with
cancellable subscribers follows that topic (:class:`Cancellations`): on start it reads
the cancellations of the last ``window`` seconds, then what is appended. In the groups
that opt in (``app.group(name, cancellable=True)`` or ``@app.subscriber(...,
cancellable=True)``), the :class:`Cancellation` middleware cancels a call under way of a
cancelled chain (an ``async def`` handler's task; a plain ``def`` one in its thread
cannot be stopped and finishes), ends a :class:`~tidings.middleware.Retry`'s wait to
call a failed one again, and skips the chain's later events: each counts in
``Stats.cancelled``, is logged, and is committed, never retried nor dead-lettered.

A chain is the events of one correlation id, or, for a cancellation by subject, the
events of that subject published up to the cancellation (a request for the same key
made afterwards is new work, not cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tidings.envelope import Event
from tidings.errors import ConfigError
from tidings.middleware.base import Delivery, Middleware, Next
from tidings.middleware.lane import lane_work
from tidings.subscriber import Subscriber
from tidings.transport import Transport
from tidings.transports.follow import Follower

__all__ = [
    "CANCELLATIONS_TOPIC",
    "CANCELLED_TYPE",
    "Cancel",
    "Cancellation",
    "Cancellations",
    "cancel_payload",
    "publish_cancel",
]

log = logging.getLogger("tidings.worker")

CANCELLATIONS_TOPIC = "_tidings.cancellations"
"""Where cancellations are appended (one partition, kept for :data:`WINDOW`)."""
CANCELLED_TYPE = "tidings.cancelled"
"""The type of a cancellation event (its data: ``correlationid``, ``subject``, ``reason``)."""
WINDOW = 24 * 3600.0
"""Seconds a cancellation is remembered by workers (and kept in its topic)."""
MAX_REMEMBERED = 100_000  # cancellations a worker keeps at most (the oldest go first)
POLL = 0.5  # seconds between two reads of the cancellations topic


@dataclass(frozen=True, slots=True)
class Cancel:
    """One cancellation: of the events of ``correlationid``, or of ``subject``'s events
    published up to ``at`` (Unix seconds)."""

    correlationid: str | None
    subject: str | None
    reason: str
    at: float

    def covers(self, event: Event) -> bool:
        if self.correlationid is not None:
            return (event.correlationid or event.id) == self.correlationid
        return event.subject == self.subject and event.time.timestamp() <= self.at


def cancel_payload(correlation_id: str | None, subject: str | None, reason: str) -> dict[str, str]:
    """The data of a cancellation event; one of ``correlation_id`` and ``subject``."""
    if (correlation_id is None) == (subject is None):
        raise ConfigError("cancel(...) takes correlation_id= or subject=, one of them")
    for name, value in (("correlation_id", correlation_id), ("subject", subject)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"cancel({name}=...) must be a non-empty string, got {value!r}")
    data = {"reason": str(reason)}
    if correlation_id is not None:
        data["correlationid"] = correlation_id
    else:
        data["subject"] = str(subject)
    return data


async def publish_cancel(
    app: Any, correlation_id: str | None, subject: str | None, reason: str
) -> Event:
    """What :meth:`tidings.Tidings.cancel` does with ``app``: append the cancellation."""
    data = cancel_payload(correlation_id, subject, reason)
    if app.started:  # (else publish says it is not)
        await app.transport.create_topic(CANCELLATIONS_TOPIC, 1, retention_ms=int(WINDOW * 1000))
    # Caused by the chain's start (its root event's id is often the correlation id):
    # `tidings trace` shows it in the chain's tree.
    event: Event = await app.publish(
        CANCELLATIONS_TOPIC, data, type=CANCELLED_TYPE, subject=subject,
        correlation_id=correlation_id, causation_id=correlation_id,
    )  # fmt: skip
    return event


def cancel_of(event: Event) -> Cancel | None:
    """The cancellation ``event`` announces, if it is one."""
    data = event.data
    if event.type != CANCELLED_TYPE or not isinstance(data, dict):
        return None
    correlation, subject = data.get("correlationid"), data.get("subject")
    if not isinstance(correlation, str | None) or not isinstance(subject, str | None):
        return None
    if correlation is None and subject is None:
        return None
    return Cancel(correlation, subject, str(data.get("reason", "")), event.time.timestamp())


class _Call:
    """A cancellable call under way: its event and the scope that cancels it."""

    __slots__ = ("cancel", "event", "scope")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.scope: asyncio.Timeout | None = None
        self.cancel: Cancel | None = None


class Cancellations:
    """What one worker knows of cancelled chains: those of the last ``window`` seconds
    (at most :data:`MAX_REMEMBERED`, the oldest forgotten first), read from
    :data:`CANCELLATIONS_TOPIC` on :meth:`start`, then followed (:meth:`follow`); and
    the cancellable calls under way, cancelled when their chain is."""

    def __init__(
        self,
        transport: Transport,
        *,
        window: float = WINDOW,
        poll: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.window = window
        self.poll = POLL if poll is None else poll
        self.clock = clock
        self.by_correlation: OrderedDict[str, Cancel] = OrderedDict()
        self.by_subject: OrderedDict[str, Cancel] = OrderedDict()
        self.calls: set[_Call] = set()
        # The wake-ups of the failed calls whose Retry may be waiting to call again (a
        # delivery holds its own; once Retry has waited or the delivery is done, gone).
        self.retrying: weakref.WeakKeyDictionary[asyncio.Event, Event] = weakref.WeakKeyDictionary()
        self._follower = Follower(transport, CANCELLATIONS_TOPIC, self._learn_event, self.poll)
        self.positions = self._follower.positions  # partition -> the next offset to read

    async def start(self) -> None:
        """Create the topic if missing and read the cancellations of the window."""
        info = await self.transport.create_topic(
            CANCELLATIONS_TOPIC, 1, retention_ms=int(self.window * 1000)
        )
        since = int((self.clock() - self.window) * 1000)
        starts = await self.transport.offsets_for_time(CANCELLATIONS_TOPIC, since)
        self.positions.update(
            {p.partition: starts.get(p.partition, p.start) for p in info.partitions}
        )
        await self.read()

    async def read(self) -> int:
        """Read what was appended since the last read; return how many records."""
        return await self._follower.read()

    async def follow(self, stop: asyncio.Event) -> None:
        """Read new cancellations every ``poll`` seconds until ``stop`` is set."""
        await self._follower.follow(stop)

    def _learn_event(self, event: Event) -> None:
        cancel = cancel_of(event)
        if cancel is not None:
            self.learn(cancel)

    def learn(self, cancel: Cancel) -> None:
        """Remember ``cancel`` (unless older than the window) and cancel its calls."""
        if cancel.at < self.clock() - self.window:
            return
        if cancel.correlationid is not None:
            _remember(self.by_correlation, cancel.correlationid, cancel)
        else:
            _remember(self.by_subject, str(cancel.subject), cancel)
        for call in list(self.calls):
            if call.cancel is None and call.scope is not None and cancel.covers(call.event):
                call.cancel = cancel
                call.scope.reschedule(asyncio.get_running_loop().time())
        for wake, event in list(self.retrying.items()):
            if cancel.covers(event):
                wake.set()

    def wake_when_cancelled(self, delivery: Delivery) -> None:
        """Set ``delivery.wake`` when the chain of its event is cancelled (now, if it
        is already): a Retry waiting to call again then skips the event at once."""
        if delivery.wake is None:
            delivery.wake = asyncio.Event()
        self.retrying[delivery.wake] = delivery.event
        if self.cancelled(delivery.event) is not None:
            delivery.wake.set()

    def cancelled(self, event: Event) -> Cancel | None:
        """The cancellation that covers ``event``, if one is known and not expired."""
        cancel = self.by_correlation.get(event.correlationid or event.id)
        if cancel is None and event.subject is not None:
            cancel = self.by_subject.get(event.subject)
            if cancel is not None and not cancel.covers(event):
                cancel = None
        if cancel is not None and cancel.at < self.clock() - self.window:
            return None
        return cancel


def _remember(known: OrderedDict[str, Cancel], key: str, cancel: Cancel) -> None:
    known[key] = cancel
    known.move_to_end(key)
    while len(known) > MAX_REMEMBERED:
        known.popitem(last=False)


class Cancellation(Middleware):
    """Stops the calls of a cancelled chain and skips its later events, for the
    subscribers that opt in (see the module's docstring). Inside
    :class:`~tidings.middleware.Retry` (a failed event whose chain is cancelled while
    Retry waits is skipped at once, without waiting the rest) and outside the inbox (a
    cancelled call's transaction is rolled back, as a failed one's).

    A worker binds it to its :class:`Cancellations` and the groups that opt in
    (:meth:`bind`); unbound, it wraps nothing.
    """

    def __init__(self) -> None:
        self.known: Cancellations | None = None
        self.groups: frozenset[str] = frozenset()

    def bind(self, known: Cancellations, groups: Iterable[str]) -> None:
        self.known = known
        self.groups = frozenset(groups)

    def wraps(self, subscriber: Subscriber) -> bool:
        return self.known is not None and (
            subscriber.cancellable or subscriber.group in self.groups
        )

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        known = self.known  # set: wraps() takes no subscriber without it
        assert known is not None
        cancel = known.cancelled(delivery.event)
        if cancel is not None:
            self._count(delivery, cancel, "skipped")
            return
        try:
            if not delivery.subscriber.is_async:
                await call_next(delivery)  # a thread cannot be stopped: it finishes
            else:
                cancel = await self._cancellable(known, delivery, call_next)
                if cancel is not None:
                    self._count(delivery, cancel, "cancelled")
        except Exception:
            known.wake_when_cancelled(delivery)  # Retry's wait for the next attempt
            raise

    @staticmethod
    async def _cancellable(
        known: Cancellations, delivery: Delivery, call_next: Next
    ) -> Cancel | None:
        """Call the rest of the chain, cancelled if its chain is meanwhile; the
        cancellation, if it was."""
        call = _Call(delivery.event)
        known.calls.add(call)
        scope = call.scope = asyncio.timeout(None)
        token = None
        work = lane_work.get()
        if work is not None and delivery.subscriber.inbox is not None:
            # Its own transaction, not a savepoint of the lane's batch: the inbox gives
            # up a batch whole when its lane is cancelled, and this call's cancellation
            # is not the lane's. What the lane holds is committed first, as the inbox does.
            if work.holding:
                await work.flush()
            token = lane_work.set(None)
        try:
            async with scope:
                await call_next(delivery)
            return None
        except TimeoutError:
            if call.cancel is None or not scope.expired():
                raise  # the handler's own
            return call.cancel
        finally:
            known.calls.discard(call)
            if token is not None:
                lane_work.reset(token)

    @staticmethod
    def _count(delivery: Delivery, cancel: Cancel, what: str) -> None:
        delivery.stats.cancelled += 1
        event, record = delivery.event, delivery.record
        log.info(
            "group %s: %s %s %s %s at %s[%d]@%d: its chain was cancelled (%s)",
            delivery.group, delivery.subscriber.name, what, event.type, event.id,
            record.topic, record.partition, record.offset, cancel.reason or "no reason given",
        )  # fmt: skip
