"""The worker: runs an app's subscribers, one consumer per group (see
:mod:`tidings.worker.group`), and the app's components beside them."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tidings.codec import decode
from tidings.dead_letters import DeadLetterLog, Intake
from tidings.envelope import Event
from tidings.errors import ConfigError
from tidings.middleware import DeadLetters, Middleware, RateLimit, Stats, default_middleware
from tidings.stats import Durations
from tidings.subscriber import Component
from tidings.transport import Record
from tidings.worker.dispatch import Dispatcher, Stopping
from tidings.worker.group import GroupRunner, Limits
from tidings.worker.slow import rate_limits, slow_consumers, with_rate_limit

if TYPE_CHECKING:
    from tidings.app import Tidings

__all__ = ["Worker", "tune_gc"]

log = logging.getLogger("tidings.worker")

# Allocations of container objects between two young collections, instead of Python's
# 700: see tune_gc.
YOUNG_COLLECTION_EVERY = 10_000


def tune_gc() -> tuple[int, int, int]:
    """Set up the garbage collector of a worker process once its app has started, as
    ``tidings run`` does; return the thresholds it replaced.

    A full collection, then ``gc.freeze()``: start-up objects (modules, the app) live as
    long as the process, so full collections no longer go through them (they were
    10-18 ms pauses in the latency benchmark). Then a young collection every 10,000
    allocations instead of 700: a worker keeps thousands of events in flight (fetched,
    queued per partition, waiting for their commit), and a young collection goes
    through all those that are still young; measured with three groups on NATS, the
    collector took 1.0 s of a 13 s run (0.2 s for the raw client) and full collections
    paused up to 87 ms; with this, throughput rose about 10% (docs/benchmarks.md). The
    older generations keep their thresholds. Call it once per process, from the code
    that owns the process (an application embedding a Worker decides for itself).
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, before[1], before[2])
    return before


class Worker:
    """Runs the subscribers of ``app`` (all groups, or the ones named)."""

    rate_limits: dict[str, RateLimit]  # per limited group, in its chains only (set by run)

    def __init__(
        self,
        app: Tidings,
        groups: Sequence[str] | None = None,
        *,
        max_in_flight: int = 1000,
        fetch_max: int = 500,
        commit_interval: float = 0.05,
        shutdown_timeout: float = 30.0,
        revoke_timeout: float = 10.0,
        middleware: Sequence[Middleware] | None = None,
        sync_threads: int = 32,
        components: bool = True,
    ) -> None:
        if max_in_flight < 1 or fetch_max < 1:
            raise ConfigError("max_in_flight and fetch_max must be >= 1")
        self.app = app
        known = app.groups()
        if not known:
            raise ConfigError(f"app {app.service!r} has no subscribers to run")
        chosen = list(groups) if groups else known
        unknown = [g for g in chosen if g not in known]
        if unknown:
            raise ConfigError(
                f"unknown group(s) {', '.join(unknown)}; this app has: {', '.join(known)}"
            )
        app.registry.check_command_owners((s.group, s.types) for s in app.subscribers)
        self.groups = chosen
        self.limits = Limits(
            max_in_flight, fetch_max, commit_interval, shutdown_timeout, revoke_timeout
        )
        # Around every handler call, outermost first (see tidings.middleware).
        self.middleware = _chain(app, middleware)
        self.cancellations = slow_consumers(app, chosen, self.middleware)  # or None
        # Synchronous handlers run here: their own pool, sized for I/O-bound work (mail,
        # webhooks), so that partitions are not limited to asyncio's default few threads.
        self.sync_threads = sync_threads
        self.threads: ThreadPoolExecutor | None = None
        self.stats = Stats()
        # Per group, its events' handling times, once time_handlers() asked for them.
        self.durations: dict[str, Durations] = {}
        # Beside the groups: the app's components (outbox relays) and the relay of
        # delayed events, each guarded by a lease, so any number of workers may run them.
        self.components: list[Component] = []
        if components:
            self.components = list(app.components)
            relay = app.scheduler_relay()
            if relay is not None:
                self.components.append(relay)
        self._runners: list[GroupRunner] = []
        # Set once every group has joined (its first assignment is known): a group that
        # starts at "latest" reads what is published from then on.
        self.ready = asyncio.Event()
        self._started: set[str] = set()
        self._stop_components = asyncio.Event()
        # Groups of one worker read the same records at about the same time: decode
        # each once. Events are immutable, so sharing them is safe; payload models are
        # built per handler call and never shared.
        self._decoded: dict[tuple[str, int, int], Event] = {}
        self._decoded_max = 4 * max_in_flight

    def time_handlers(self) -> dict[str, Durations]:
        """Keep each group's event handling times from now on (in :attr:`durations`,
        per group; what ``messaging_process_duration_seconds`` exposes); call it before
        :meth:`run`. Off by default: a clock read per event is saved."""
        for group in self.groups:
            self.durations.setdefault(group, Durations())
        return self.durations

    def decoded(self, record: Record) -> Event:
        """The event in ``record`` (raises EventError if it cannot be decoded); with
        several groups, the same Event for each (see ``Dispatcher(shared_events=)``)."""
        if len(self.groups) == 1:  # nobody to share the event with
            return self.decoded_afresh(record)
        key = (record.topic, record.partition, record.offset)
        event = self._decoded.get(key)
        if event is None:
            event = self.decoded_afresh(record)
            if len(self._decoded) >= self._decoded_max:
                self._decoded.clear()  # cheaper than evicting one by one
            self._decoded[key] = event
        return event

    def decoded_afresh(self, record: Record) -> Event:
        """The event in ``record``, a new Event (and payload) at each call."""
        return decode(record[5], self.app.max_event_bytes)  # .value (an index: cheaper)

    def _runner(self, group: str) -> GroupRunner:
        """The runner of ``group``: its dead letters' intake in front of its
        subscribers' chains."""
        app = self.app
        subscribers = [s for s in app.subscribers if s.group == group]
        # Without the DeadLetters middleware nothing is dead-lettered (poison is logged
        # and passed, failures block), but replays are still read and handled.
        writes = any(isinstance(m, DeadLetters) for m in self.middleware)
        dead = DeadLetterLog(app.transport, group, resolved=False, values=False)
        middleware = with_rate_limit(self.middleware, self.rate_limits.get(group))

        def make_intake(stopping: Stopping) -> Intake:
            dispatcher = Dispatcher(
                app, app.registry, group, subscribers, middleware, stats=self.stats,
                stopping=stopping, dead_letters=dead if writes else None, threads=self.threads,
                decode=self.decoded_afresh, shared_events=len(self.groups) > 1,
                durations=self.durations.get(group),
            )  # fmt: skip
            return Intake(
                dead, sequenced=app.group_settings(group).sequenced, writes=writes,
                decode=self.decoded if len(self.groups) > 1 else self.decoded_afresh,
                dispatch=dispatcher.dispatch, stats=self.stats,
                stopping=stopping, runs=dispatcher if dispatcher.batches else None,
            )  # fmt: skip

        return GroupRunner(
            app.transport, group, sorted({s.topic for s in subscribers}),
            subscribers[0].start_from, self.limits, make_intake,
            lambda: self._joined(group), app.group_settings(group).concurrency,
        )  # fmt: skip

    async def serve(self, stop: asyncio.Event | None = None, *, tune_gc: bool = False) -> None:
        """What ``tidings run`` does, in one call: start the app, run its groups and
        components until stopped, let running handlers finish, commit, close the app::

            asyncio.run(Worker(app).serve(tune_gc=True))  # a process of its own

        Without ``stop``, SIGTERM and SIGINT stop it (from the main thread; their
        handlers are removed on the way out). Where something else owns the signals (a
        web server running a worker beside it), pass ``stop`` and set it: no handler is
        installed. ``tune_gc=True`` sets up the process's garbage collector for a
        worker (:func:`tune_gc`), as ``tidings run`` does; it changes the whole
        process, so leave it off where the worker is a guest. Handlers left running
        after ``shutdown_timeout`` are counted in ``stats.abandoned``.
        """
        app = self.app
        signals = _SignalHandlers() if stop is None else None
        stop = stop or asyncio.Event()
        if signals is not None:
            signals.install(stop)
        try:
            async with app:
                if tune_gc:
                    _tune_gc()
                log.info(
                    "running group(s) %s of %s on %s", ", ".join(self.groups), app.service, app.url
                )
                await self.run(stop)
            log.info(
                "stopped: %d handled, %d failed attempts",
                self.stats.handled,
                self.stats.failed_attempts,
            )
        finally:
            if signals is not None:
                signals.remove()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the task is cancelled), then drain and commit.
        The app must be started (``async with app``); :meth:`serve` does that too."""
        loop = asyncio.get_running_loop()
        self._stop_components = asyncio.Event()
        followers = []
        if self.cancellations is not None:
            # Cancellations first: an event of a chain cancelled before the start is skipped.
            await self.cancellations.start()
            followers.append(loop.create_task(self.cancellations.follow(self._stop_components)))
        self.rate_limits = rate_limits(self.app, self.groups)  # new ones for this loop
        followers += [
            loop.create_task(limit.follow(self.app.transport, self._stop_components))
            for limit in self.rate_limits.values()
        ]
        if any(not s.is_async for s in self.app.subscribers if s.group in self.groups):
            self.threads = ThreadPoolExecutor(self.sync_threads, "tidings-handler")
        self._runners = [self._runner(g) for g in self.groups]
        tasks = [loop.create_task(r.run()) for r in self._runners]
        helpers = [loop.create_task(c.run(self._stop_components)) for c in self.components]
        helpers += followers
        stopper = loop.create_task((stop or asyncio.Event()).wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            stopper.cancel()
            results = await asyncio.gather(*tasks, *helpers, return_exceptions=True)
            self.stats.abandoned += sum(r.abandoned for r in self._runners)
            for result in results:
                if isinstance(result, Exception):
                    log.error("a group runner or component ended with an error: %r", result)
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)
                self.threads = None

    def _joined(self, group: str) -> None:
        self._started.add(group)
        if len(self._started) == len(self._runners):
            self.ready.set()

    def stop(self) -> None:
        """Tell the groups and components to stop, as setting ``run``'s ``stop`` does:
        :meth:`run` lets running handlers finish, commits and returns."""
        for runner in self._runners:
            runner.stop()
        self._stop_components.set()

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        """SIGTERM and SIGINT set ``stop``: in-flight work finishes and is committed.
        (:meth:`serve` installs them itself, and removes them on the way out.)"""
        _SignalHandlers().install(stop)


_tune_gc = tune_gc  # for Worker.serve, whose option has the function's name


class _SignalHandlers:
    """SIGTERM and SIGINT setting an event, on the running loop, until removed; then
    the handlers from before are back (``asyncio.run``'s for SIGINT, say)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.before: dict[signal.Signals, Any] = {}

    def install(self, stop: asyncio.Event) -> None:
        try:
            for sig in self.SIGNALS:
                before = signal.getsignal(sig)
                self.loop.add_signal_handler(sig, stop.set)
                self.before[sig] = before
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            self.remove()
            raise ConfigError(
                f"cannot stop the worker on SIGTERM/SIGINT here ({exc}): pass "
                "stop=asyncio.Event() and set it to stop the worker"
            ) from None

    def remove(self) -> None:
        for sig, before in self.before.items():
            self.loop.remove_signal_handler(sig)
            if before is not None:  # None: not set from Python, nothing to put back
                signal.signal(sig, before)
        self.before.clear()


def _chain(app: Tidings, middleware: Sequence[Middleware] | None) -> list[Middleware]:
    """The worker's middleware: ``middleware`` or the default list, with the process
    spans outermost if ``app`` traces (tidings.otel) and the list has no tracing
    middleware of its own."""
    chain = list(default_middleware() if middleware is None else middleware)
    if app.tracing is not None:
        from tidings.otel import TracingMiddleware

        if not any(isinstance(m, TracingMiddleware) for m in chain):
            chain.insert(0, TracingMiddleware(app.tracing))
    return chain
