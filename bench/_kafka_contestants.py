"""The three contestants of ``bench/bench_kafka.py``, each behind one small face.

- ``tidings``: a ``Tidings("kafka://...")`` app; ``publish_many``/``publish`` of a
  registered pydantic model; ``@app.subscriber`` handlers run by a ``Worker``.
- ``raw``: confluent-kafka with the transport's own librdkafka settings
  (``KafkaConfig.producer()``/``consumer()``), driven from asyncio as in
  ``bench/kafka_clients.py``: ``produce()`` on the loop and a poll thread for delivery
  reports; the consumer on its own thread, a commit after each fetched batch. It sends
  the very bytes tidings sends (each event's envelope encoded before the clock starts,
  in binary mode: data as the value, ``ce_*`` headers) and validates the value into
  the same pydantic model before calling its handler.
- ``faststream``: ``faststream.kafka.KafkaBroker`` (aiokafka), as its documentation
  shows it: pydantic model messages, ``@broker.subscriber(..., ack_policy=AckPolicy.ACK)``
  (commit after the handler returns), ``broker.publish``. aiokafka's idempotent
  producer fails on Tansu (decision 0005), so it publishes with acks=all *without*
  idempotence; its per-message log lines are off (``logger=None``): tidings and the
  raw loop write none either.

Every contestant gets the same events, keys (200, partition by Kafka's murmur2, which
``tidings.partitioning`` and aiokafka's default partitioner share), topic of 8
partitions, fetch wait (10 ms) and session timeout (2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.metadata
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel

from bench._common import Deadline, log
from tidings import Tidings, Worker
from tidings.codec import encode
from tidings.partitioning import partition_for
from tidings.transports.kafka_config import KafkaConfig
from tidings.transports.kafka_wire import to_kafka

EVENT_TYPE = "bench.ticked"
PARTITIONS = 8
KEYS = 200
NOTE = "x" * 420  # with the other fields, a payload of ~500 bytes of JSON
MAX_RECORDS = 500  # per raw fetch, as the Worker's fetch_max
STOP_SECONDS = 60.0  # bound of a wait for a Worker (or consumer loop) to stop
JOIN_SECONDS = 60.0  # bound of a wait for every group to see the warm-up events
FETCH_SECONDS = 0.1  # how long one raw fetch may wait for a first message


# Its Tansu broker and confluent-kafka producer are reused as they are. The module is
# not clean under mypy (its own errors, which are not this module's to fix), so it is
# imported as an untyped module object rather than with `from ... import`.
kafka_clients: Any = importlib.import_module("bench.kafka_clients")


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


# -- tidings ---------------------------------------------------------------------------


class TidingsContestant(Contestant):
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
            app.subscriber(topic, group=group)(_tidings_handler(tally, group))
        self.app = app
        try:
            async with app:
                if not groups:
                    yield []
                    return
                stop = asyncio.Event()
                task = asyncio.get_running_loop().create_task(Worker(app).run(stop))
                try:
                    yield [task]
                finally:
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


def _tidings_handler(tally: Tally, group: str) -> Any:
    async def handle(body: Ticked) -> None:
        tally.seen(group, body)

    return handle


# -- confluent-kafka ---------------------------------------------------------------------

_encoder = Tidings("memory://", service="bench")
_encoder.event(EVENT_TYPE, subject="task_id")(Ticked)


def kafka_record(body: Ticked) -> tuple[bytes, bytes, list[tuple[str, bytes]], int]:
    """(key, value, headers, partition) of the record tidings would write for ``body``."""
    value, headers = to_kafka(encode(_encoder.build(body)), "binary")
    assert value is not None  # binary mode: the data
    return body.task_id.encode(), value, headers, partition_for(body.task_id, PARTITIONS)


class RawConsumer:
    """A ``confluent_kafka.Consumer`` on a thread of its own (librdkafka consumers are not
    thread-safe), as ``bench/kafka_clients.py`` drives it: a fetch is ``poll(timeout)``
    for the first message, then ``consume(n, 0)`` for what is already queued."""

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        from confluent_kafka import Consumer

        self.c = Consumer(conf)
        self.topic = topic
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="raw-consumer")

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def start(self) -> None:
        await self.call(self.c.subscribe, [self.topic])

    def _fetch(self, timeout: float) -> list[Any]:
        first = self.c.poll(timeout)
        if first is None:
            return []
        msgs = [first, *self.c.consume(MAX_RECORDS - 1, 0)]
        return [m for m in msgs if m.error() is None]

    async def fetch(self, timeout: float) -> list[Any]:
        return list(await self.call(self._fetch, timeout))

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        await self.call(self.c.commit, offsets=tps, asynchronous=False)

    async def close(self) -> None:
        await self.call(self.c.close)
        self.pool.shutdown(wait=True)


class RawContestant(Contestant):
    name = "raw"

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.producer: Any = None  # a kafka_clients.ConfluentProducer

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        self.producer = kafka_clients.ConfluentProducer(self.config.producer())
        consumers: list[RawConsumer] = []
        tasks: list[asyncio.Task[Any]] = []
        stop = asyncio.Event()
        try:
            for group in groups:
                assert tally is not None
                consumer = RawConsumer(self.config.consumer(group, "earliest"), topic)
                consumers.append(consumer)
                await consumer.start()
                tasks.append(asyncio.ensure_future(self._consume(consumer, group, tally, stop)))
            yield tasks
        finally:
            stop.set()
            if tasks:
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            for consumer in consumers:
                await consumer.close()
            await self.producer.close()
            self.producer = None

    @staticmethod
    async def _consume(
        consumer: RawConsumer, group: str, tally: Tally, stop: asyncio.Event
    ) -> None:
        async def handle(body: Ticked) -> None:
            tally.seen(group, body)

        while not stop.is_set():
            msgs = await consumer.fetch(FETCH_SECONDS)
            if not msgs:
                continue
            offsets: dict[tuple[str, int], int] = {}
            for m in msgs:
                await handle(Ticked.model_validate_json(m.value()))
                offsets[(m.topic(), m.partition())] = m.offset() + 1
            await consumer.commit(offsets)

    def prepare(self, events: list[Ticked]) -> Any:
        return [kafka_record(e) for e in events]

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        assert self.producer is not None
        waits = [
            await self.producer.send(topic, key, value, partition, headers)
            for key, value, headers, partition in chunk
        ]
        await asyncio.gather(*waits)

    async def send_one(self, topic: str, body: Ticked) -> None:
        assert self.producer is not None
        key, value, headers, partition = kafka_record(body)
        await (await self.producer.send(topic, key, value, partition, headers))


# -- FastStream ------------------------------------------------------------------------


class FastStreamContestant(Contestant):
    name = "faststream"

    def __init__(
        self, bootstrap: str, session_timeout_ms: int, heartbeat_ms: int, *, batch: bool = False
    ) -> None:
        self.bootstrap = bootstrap
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.broker: Any = None
        # batch=True: a batch subscriber (a list of models per call, one commit per
        # batch), FastStream's documented way to consume faster; informational.
        self.batch = batch
        if batch:
            self.name = "faststream_batch"

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        from faststream import AckPolicy
        from faststream.kafka import KafkaBroker

        broker = KafkaBroker(
            self.bootstrap,
            acks="all",
            enable_idempotence=False,  # aiokafka's InitProducerId fails on Tansu
            linger_ms=5,  # as tidings' default linger_ms
            logger=None,  # no log line per message (neither of the others writes one)
        )
        for group in groups:
            assert tally is not None
            handler = (_faststream_batch_handler if self.batch else _faststream_handler)(
                tally, group
            )
            broker.subscriber(
                topic,
                group_id=group,
                batch=self.batch,
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.ACK,  # commit after the handler returns
                fetch_max_wait_ms=10,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_ms,
            )(handler)
        try:
            await broker.start()
            self.broker = broker
            yield []
        finally:
            self.broker = None
            await broker.stop()

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        # no_confirm=True hands back aiokafka's delivery future: the chunk is sent as
        # a stream and its acknowledgments are awaited together.
        waits = [
            await self.broker.publish(body, topic, key=body.task_id.encode(), no_confirm=True)
            for body in chunk
        ]
        await asyncio.gather(*waits)

    async def send_one(self, topic: str, body: Ticked) -> None:
        await self.broker.publish(body, topic, key=body.task_id.encode())


def _faststream_handler(tally: Tally, group: str) -> Any:
    async def handle(body: Ticked) -> None:
        tally.seen(group, body)

    return handle


def _faststream_batch_handler(tally: Tally, group: str) -> Any:
    async def handle(bodies: list[Ticked]) -> None:
        for body in bodies:
            tally.seen(group, body)

    return handle


# -- the measurements ------------------------------------------------------------------


async def measure_publish(c: Contestant, topic: str, chunks: list[list[Ticked]]) -> float:
    """Events/s from the first publish to the acknowledgment of the last chunk."""
    prepared = [c.prepare(chunk) for chunk in chunks]
    n = sum(len(chunk) for chunk in chunks)
    async with c.session(topic, [], None):
        await c.send_chunk(topic, c.prepare(warm_events()))  # metadata, connections
        deadline = Deadline(120)
        start = time.perf_counter()
        for chunk in prepared:
            if deadline.over():
                raise RuntimeError(f"{c.name}: publishing {n} events took over 120 s")
            await c.send_chunk(topic, chunk)
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
        deadline = Deadline(120)
        start = time.perf_counter()
        for chunk in prepared:
            if deadline.over():
                raise RuntimeError(f"{c.name}: publishing {n} events took over 120 s")
            await c.send_chunk(topic, chunk)
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
    group = f"{topic}-g0"  # a group of its own: FastStream's assignor is not librdkafka's
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
