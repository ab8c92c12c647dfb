"""One group's subscribers behind their middleware chains: an event to the handlers
that want it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tidings.context import Context, Publisher, causal_scope
from tidings.contracts import Registry
from tidings.dead_letters import DeadLetter, DeadLetterLog
from tidings.envelope import Event
from tidings.middleware import Delivery, Middleware, Next, compose
from tidings.stats import Stats
from tidings.subscriber import Subscriber
from tidings.transport import Record

__all__ = ["Dispatcher"]


class Dispatcher:
    """Calls the subscribers of one group, each through its own chain (the worker's
    middleware, without those that do nothing for it), the handler innermost."""

    def __init__(
        self,
        publisher: Publisher,
        registry: Registry,
        group: str,
        subscribers: Sequence[Subscriber],
        middleware: Sequence[Middleware],
        *,
        stats: Stats,
        stopping: asyncio.Event,
        dead_letters: DeadLetterLog | None,
        threads: ThreadPoolExecutor | None,
    ) -> None:
        self.publisher = publisher
        self.registry = registry
        self.group = group
        self.stats = stats
        self.stopping = stopping
        self.dead_letters = dead_letters
        self.threads = threads
        self.loop = asyncio.get_running_loop()
        self.by_topic: dict[str, list[Subscriber]] = {}
        for s in subscribers:
            self.by_topic.setdefault(s.topic, []).append(s)
        self.chains = {
            id(s): compose([m for m in middleware if m.wraps(s)], self._call) for s in subscribers
        }
        # (topic, event type) -> the subscribers that want it, with their chains; made
        # on the first such event.
        self.routes: dict[tuple[str, str], list[tuple[Subscriber, Next]]] = {}

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    def _route(self, topic: str, event_type: str) -> list[tuple[Subscriber, Next]]:
        subscribers = self.by_topic.get(topic, ())
        route = [(s, self.chains[id(s)]) for s in subscribers if s.wants(event_type)]
        self.routes[(topic, event_type)] = route
        return route

    async def dispatch(self, record: Record, event: Event, replay: DeadLetter | None) -> None:
        """Hand ``event`` (read at ``record``) to each subscriber that wants it; for a
        replayed dead letter, to the handler that failed on it."""
        wanted = self.routes.get((record.topic, event.type))
        if wanted is None:
            wanted = self._route(record.topic, event.type)
        replay_of = None
        if replay is not None:
            replay_of = replay.entry
            if replay.handler is not None:
                wanted = [w for w in wanted if w[0].name == replay.handler] or wanted
        if not wanted:
            self.stats.skipped += 1
            return
        # Everything a handler publishes is caused by this event (correlation kept);
        # the event itself is the scope (current_scope makes the Scope when asked).
        token = causal_scope.set(event)
        try:
            for sub, chain in wanted:
                await chain(
                    Delivery(
                        sub, event, record, self.group, self.stats, self.stopping, 1,
                        self.dead_letters, replay_of,
                    )
                )  # fmt: skip
        finally:
            causal_scope.reset(token)
        self.stats.handled += 1

    def _call(self, delivery: Delivery) -> Awaitable[None]:
        """The innermost step: the typed payload, the context, the handler. A plain
        function that returns an async handler's own coroutine, not a coroutine that
        awaits it: one frame less per event and subscriber."""
        sub, event, record = delivery.subscriber, delivery.event, delivery.record
        # Built afresh for each attempt: a handler may have changed the last one.
        payload = self.registry.decode_payload(event.type, event.dataversion, event.data)
        ctx = None
        if sub.takes_context:
            ctx = Context(
                self.publisher,
                event,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                group=self.group,
                attempt=delivery.attempt,
                loop=self.loop,
                session=delivery.session,
            )
        if sub.is_async:
            call: Awaitable[None]
            call = sub.handler(payload) if ctx is None else sub.handler(payload, ctx)
            return call
        return self._call_in_thread(sub, payload, ctx)

    async def _call_in_thread(self, sub: Subscriber, payload: Any, ctx: Context | None) -> None:
        args = (payload, ctx) if ctx is not None else (payload,)
        call = functools.partial(contextvars.copy_context().run, sub.handler, *args)
        result = await self.loop.run_in_executor(self.threads, call)
        if inspect.isawaitable(result):  # an async callable we could not tell
            await result
