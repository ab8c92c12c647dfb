"""What the transport benchmarks (``bench_kafka``, ``bench_nats``) share about their
contestants: the events, the tally of what handlers saw, the face every contestant
shows, tidings' contestant (an app and a Worker, the same on every transport) and the
three measurements.

Every contestant gets the same events: a pydantic model of ~500 bytes of JSON, 200
keys (partition by Kafka's murmur2, which ``tidings.partitioning`` shares), a topic of
8 partitions created before each measurement, fresh groups for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from bench._common import Deadline, log
from tidings import Tidings, Worker
from tidings.codec import encode
from tidings.partitioning import partition_for
from tidings.worker import tune_gc

EVENT_TYPE = "bench.ticked"
PARTITIONS = 8
KEYS = 200
NOTE = "x" * 420  # with the other fields, a payload of ~500 bytes of JSON
STOP_SECONDS = 60.0  # bound of a wait for a Worker (or consumer loop) to stop
JOIN_SECONDS = 60.0  # bound of a wait for every group to see the warm-up events
PUBLISH_SECONDS = 120.0  # bound of the publishing loop of one measurement


class Ticked(BaseModel):
    """The payload of every event: ~500 bytes of JSON. ``seq`` < 0 marks a warm-up
    event; ``sent`` is ``time.perf_counter()`` at publish (latency figure), else 0."""

    task_id: str
    seq: int
    status: str
    sent: float
    note: str


def event(seq: int, sent: float = 0.0) -> Ticked:
    return Ticked(task_id=f"task-{seq % KEYS:04d}", seq=seq, status="open", sent=sent, note=NOTE)


def _warm_keys() -> list[str]:
    """One key per partition, so that the warm-up reaches every partition."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTITIONS:
        key = f"warm-{i}"
        found.setdefault(partition_for(key, PARTITIONS), key)
        i += 1
    return [found[p] for p in range(PARTITIONS)]


WARM_KEYS = _warm_keys()


def warm_events() -> list[Ticked]:
    return [Ticked(task_id=k, seq=-1, status="warm", sent=0.0, note=NOTE) for k in WARM_KEYS]


_encoder = Tidings("memory://", service="bench")
_encoder.event(EVENT_TYPE, subject="task_id")(Ticked)


def envelope(body: Ticked) -> bytes:
    """The structured-mode CloudEvents JSON tidings writes for ``body`` (a fresh id):
    what the ``raw_prebuilt`` contestants send, built before their clock starts."""
    return encode(_encoder.build(body))


SCHEMA = f"urn:tidings:schema:{EVENT_TYPE}:1"  # the dataschema tidings writes


def by_hand() -> tuple[str, str]:
    """A new event id and the time now, as an application using a raw client makes
    them for each event it sends, inside its clock: the raw contestants make records
    of tidings' shape themselves (these, and constants for the other attributes), so
    that they send as much and pay, as their users would, for making it."""
    return str(uuid.uuid4()), datetime.now(UTC).isoformat()


class Tally:
    """What the handlers of every group saw: warm-up events apart, the time each group
    handled its ``n``-th measured event, and (latency) the milliseconds from ``sent`` to
    handling of events with ``seq >= skip``. Handlers all run on the event loop."""

    def __init__(self, groups: Sequence[str], n: int, skip: int | None = None) -> None:
        self.n = n
        self.skip = skip
        self.warm = dict.fromkeys(groups, 0)
        self.count = dict.fromkeys(groups, 0)
        self.finished: dict[str, float] = {}
        self.latencies: list[float] = []
        self.warmed = asyncio.Event()
        self.done = asyncio.Event()

    def seen(self, group: str, body: Ticked) -> None:
        if body.seq < 0:
            self.warm[group] += 1
            if all(v >= PARTITIONS for v in self.warm.values()):
                self.warmed.set()
            return
        if self.skip is not None and body.seq >= self.skip:
            self.latencies.append((time.perf_counter() - body.sent) * 1000)
        count = self.count[group] = self.count[group] + 1
        if count == self.n:
            self.finished[group] = time.perf_counter()
            if len(self.finished) == len(self.count):
                self.done.set()

    def progress(self) -> str:
        return ", ".join(f"{g} {c}/{self.n}" for g, c in self.count.items())


def handler(tally: Tally, group: str) -> Any:
    """An ``async def`` handler of one model, as each framework's users write one."""

    async def handle(body: Ticked) -> None:
        tally.seen(group, body)

    return handle


def batch_handler(tally: Tally, group: str) -> Any:
    """A handler of a list of models (FastStream's batch subscribers)."""

    async def handle(bodies: list[Ticked]) -> None:
        for body in bodies:
            tally.seen(group, body)

    return handle


async def wait_event(
    flag: asyncio.Event, seconds: float, what: str, watch: Sequence[asyncio.Task[Any]]
) -> None:
    """Wait for ``flag`` at most ``seconds``; fail early if a watched task ends."""
    waiter = asyncio.ensure_future(flag.wait())
    try:
        done, _ = await asyncio.wait(
            [waiter, *watch], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if flag.is_set():
        return
    for task in watch:
        if task in done:
            raise RuntimeError(f"{what}: a consumer task ended first: {task!r}")
    raise RuntimeError(f"{what}: not done within {seconds:.0f} s")


class Contestant:
    """A publisher and, for ``groups``, one consumer per group whose handler calls
    ``tally.seen``. ``session`` yields the background tasks to watch."""

    name = ""

    def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> contextlib.AbstractAsyncContextManager[list[asyncio.Task[Any]]]:
        raise NotImplementedError

    def prepare(self, events: list[Ticked]) -> Any:
        """What ``send_chunk`` takes for these events (built before the clock starts)."""
        return events

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        """Publish a prepared chunk; return once every event in it is acknowledged."""
        raise NotImplementedError

    async def send_one(self, topic: str, body: Ticked) -> None:
        """Publish one event; return once it is acknowledged."""
        raise NotImplementedError


class RawContestant(Contestant):
    """The raw client's contestant: each record made by hand on the clock
    (``by_hand``, ``hand_made``), as its users make theirs; or, ``prebuilt``
    (informational), tidings' own records made before the clock (``tidings_made``)
    and a consumer that reads nothing but the payload."""

    name = "raw"

    def __init__(self, *, prebuilt: bool = False) -> None:
        self.prebuilt = prebuilt
        if prebuilt:
            self.name = "raw_prebuilt"

    def hand_made(self, body: Ticked) -> Any:
        raise NotImplementedError

    def tidings_made(self, body: Ticked) -> Any:
        raise NotImplementedError

    def prepare(self, events: list[Ticked]) -> Any:
        return [self.tidings_made(e) for e in events] if self.prebuilt else events

    def records(self, chunk: Any) -> Any:
        """The records of a prepared chunk: made now, unless they were made before."""
        return chunk if self.prebuilt else map(self.hand_made, chunk)

    async def send_one(self, topic: str, body: Ticked) -> None:
        await self.send_chunk(topic, self.prepare([body]))


# -- tidings -------------------------------------------------------------------------


class TidingsContestant(Contestant):
    """A ``Tidings(url)`` app as a user writes one, on any transport: a registered
    pydantic model (``subject="task_id"``), ``publish_many``/``publish``, one ``async
    def`` handler per group run by a ``Worker`` with its defaults, in a process set up
    as ``tidings run`` sets up its own (``tune_gc``) while the Worker runs."""

    name = "tidings"

    def __init__(self, url: str) -> None:
        self.url = url
        self.app: Tidings | None = None
        self.slow_stops = 0

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        app = Tidings(self.url, service="bench")
        app.event(EVENT_TYPE, subject="task_id")(Ticked)
        for group in groups:
            assert tally is not None
            app.subscriber(topic, group=group)(handler(tally, group))
        self.app = app
        try:
            async with app:
                if not groups:
                    yield []
                    return
                stop = asyncio.Event()
                # The process as `tidings run` sets it up (tune_gc), for this
                # contestant's turn only: the others run with Python's defaults, as
                # their own runners leave them.
                thresholds = tune_gc()
                task = asyncio.get_running_loop().create_task(Worker(app).run(stop))
                try:
                    yield [task]
                finally:
                    gc.unfreeze()
                    gc.set_threshold(*thresholds)
                    stop.set()
                    try:
                        await asyncio.wait_for(task, STOP_SECONDS)
                    except TimeoutError:
                        # Seen once during development; counted, so that a run shows it.
                        self.slow_stops += 1
                        log(f"  tidings: the Worker did not stop within {STOP_SECONDS:.0f} s")
        finally:
            self.app = None

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        assert self.app is not None
        await self.app.publish_many(topic, chunk)

    async def send_one(self, topic: str, body: Ticked) -> None:
        assert self.app is not None
        await self.app.publish(topic, body)


# -- the measurements ----------------------------------------------------------------


async def _send_all(c: Contestant, topic: str, prepared: list[Any], n: int) -> Deadline:
    deadline = Deadline(PUBLISH_SECONDS)
    for chunk in prepared:
        if deadline.over():
            raise RuntimeError(f"{c.name}: publishing {n} events took over 120 s")
        await c.send_chunk(topic, chunk)
    return deadline


async def measure_publish(c: Contestant, topic: str, chunks: list[list[Ticked]]) -> float:
    """Events/s from the first publish to the acknowledgment of the last chunk."""
    prepared = [c.prepare(chunk) for chunk in chunks]
    n = sum(len(chunk) for chunk in chunks)
    async with c.session(topic, [], None):
        await c.send_chunk(topic, c.prepare(warm_events()))  # metadata, connections
        start = time.perf_counter()
        await _send_all(c, topic, prepared, n)
        return n / (time.perf_counter() - start)


async def measure_e2e(
    c: Contestant, topic: str, chunks: list[list[Ticked]], groups: Sequence[str]
) -> float:
    """Events/s (per group) from the first publish until every group handled all; the
    groups joined and saw a warm-up event on every partition before the clock starts."""
    prepared = [c.prepare(chunk) for chunk in chunks]
    n = sum(len(chunk) for chunk in chunks)
    tally = Tally(groups, n)
    async with c.session(topic, groups, tally) as watch:
        await c.send_chunk(topic, c.prepare(warm_events()))
        await wait_event(tally.warmed, JOIN_SECONDS, f"{c.name}: warm-up of {groups}", watch)
        start = time.perf_counter()
        deadline = await _send_all(c, topic, prepared, n)
        try:
            await wait_event(tally.done, max(deadline.left(), 5), f"{c.name}: e2e", watch)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} ({tally.progress()})") from None
        return n / (max(tally.finished.values()) - start)


async def measure_latency(
    c: Contestant, topic: str, rate: int, seconds: float, skip: int
) -> tuple[list[float], float]:
    """Milliseconds from publish to handling, of events ``skip..`` sent at ``rate``/s
    (open loop: a slow publish does not delay the next); and the worst lateness of a
    send against its schedule, in ms."""
    from bench.fig_latency import _paced

    total = skip + int(rate * seconds)
    group = f"{topic}-g0"  # a group of its own
    tally = Tally([group], total, skip=skip)
    async with c.session(topic, [group], tally) as watch:
        await c.send_chunk(topic, c.prepare(warm_events()))
        await wait_event(tally.warmed, JOIN_SECONDS, f"{c.name}: latency warm-up", watch)

        async def send(i: int) -> None:
            await c.send_one(topic, event(i, time.perf_counter()))

        worst = await _paced(total, rate, send)
        try:
            await wait_event(tally.done, 30, f"{c.name}: latency", watch)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} ({tally.progress()})") from None
    return sorted(tally.latencies), worst * 1000
