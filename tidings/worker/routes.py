"""Which subscribers of a group want the events of a (topic, event type), and how those
events are handled: one at a time through the chains, or in runs, in a thread (plain
def handlers) or on the loop (async ones) (docs/decisions/0013-plain-def-handlers-in-runs.md,
0019-async-handlers-in-runs.md, 0041-inbox-runs-in-one-thread.md).

A :class:`RouteTable` is made once per group and fills its tables on the first event of
each (topic, event type); the dispatcher reads them on every event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tidings.envelope import Event
from tidings.middleware import Middleware, Next, compose
from tidings.middleware.base import run_part
from tidings.subscriber import Subscriber
from tidings.transport import Record

__all__ = ["LOOP", "ONE", "THREAD", "Route", "RouteTable"]

Route = list[tuple[Subscriber, Next]]

# How the events of a (topic, event type) are handled: one at a time through the
# chains, or in runs in a thread (plain def handlers), or in runs on the loop (async).
ONE, THREAD, LOOP = 0, 1, 2


class RouteTable:
    """The routes of one group's ``subscribers``, each behind its own chain: the
    ``middleware`` that wraps it, ``innermost`` the handler's call."""

    def __init__(
        self,
        subscribers: Sequence[Subscriber],
        middleware: Sequence[Middleware],
        innermost: Next,
        threads: ThreadPoolExecutor | None,
    ) -> None:
        self.by_topic: dict[str, list[Subscriber]] = {}
        for s in subscribers:
            self.by_topic.setdefault(s.topic, []).append(s)
        self.layers = {id(s): [m for m in middleware if m.wraps(s)] for s in subscribers}
        self.chains = {id(s): compose(self.layers[id(s)], innermost) for s in subscribers}
        # Plain def handlers whose chain has a middleware that takes part in runs.
        parts = [(id(s), run_part(self.layers[id(s)], s)) for s in subscribers if threads]
        self.parts: dict[int, Middleware] = {k: p for k, p in parts if p is not None}
        # Handlers whose middleware acts only on errors: called in runs (plain def
        # handlers when there is a thread pool to run them in); and those above.
        self.in_runs = {
            id(s)
            for s in subscribers
            if (s.is_async or threads is not None)
            and all(m.only_on_error(s) for m in self.layers[id(s)])
        } | set(self.parts)
        # (topic, event type) -> the subscribers that want it, with their chains, and
        # how its events are handled (ONE, THREAD, LOOP); made on the first such event.
        self.routes: dict[tuple[str, str], Route] = {}
        self.runs: dict[tuple[str, str], int] = {}
        # (topic, event type) -> None if its events are never handled in runs (ONE),
        # else the wants_chain of the middleware in its chains that must see the calls of
        # some events (which then leave the runs): asked for each of its events.
        self.watchers: dict[tuple[str, str], tuple[Callable[[Event], bool], ...] | None] = {}
        # Those whose events are all handled in runs (no watchers): a set lookup, not a
        # call of batchable, per event.
        self.always: set[tuple[str, str]] = set()

    def route(self, topic: str, event_type: str) -> Route:
        """The subscribers that want ``event_type`` on ``topic``, kept in the tables."""
        subscribers = self.by_topic.get(topic, ())
        route = [(s, self.chains[id(s)]) for s in subscribers if s.wants(event_type)]
        self.routes[(topic, event_type)] = route
        kind = ONE
        if route and all(id(s) in self.in_runs for s, _ in route):
            if all(s.is_async for s, _ in route):
                kind = LOOP
            # (A middleware's part in a run serves one subscriber's calls.)
            elif not any(s.is_async for s, _ in route) and (
                len(route) == 1 or not any(id(s) in self.parts for s, _ in route)
            ):
                kind = THREAD
        self.runs[(topic, event_type)] = kind
        watchers = {
            id(m): m.wants_chain
            for s, _ in route
            for m in self.layers[id(s)]
            if type(m).wants_chain is not Middleware.wants_chain
        }  # a dict: each middleware once, in the chain's order
        self.watchers[(topic, event_type)] = None if kind == ONE else tuple(watchers.values())
        if kind != ONE and not watchers:
            self.always.add((topic, event_type))
        return route

    def batchable(self, record: Record, event: Event) -> bool:
        """Whether ``event`` may be handled in a run: the subscribers that want it are
        all plain def handlers, or all async ones, whose middleware acts only on errors,
        and no middleware of theirs wants to see this event's calls."""
        key = (record.topic, event.type)
        try:
            watchers = self.watchers[key]
        except KeyError:
            self.route(*key)
            watchers = self.watchers[key]
        if watchers is None:
            return False
        for wants in watchers:  # noqa: SIM110 (a loop, not any(): no generator per event)
            if wants(event):
                return False
        return True

    def parted(self, route: Route) -> Subscriber | None:
        """The subscriber of ``route`` whose calls a middleware takes part in (the
        route's only one: see :meth:`route`), or None."""
        sub = route[0][0]
        return sub if id(sub) in self.parts else None
