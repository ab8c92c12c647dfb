"""The contestants of ``bench/bench_kafka.py``, each behind one small face.

- ``tidings``: a ``Tidings("kafka://...")`` app; ``publish_many``/``publish`` of a
  registered pydantic model; ``@app.subscriber`` handlers run by a ``Worker``.
- ``raw``: confluent-kafka with the transport's own librdkafka settings
  (``KafkaConfig.producer()``/``consumer()``), driven from asyncio as in
  ``bench/kafka_clients.py``: ``produce()`` on the loop and a poll thread for delivery
  reports; the consumer on its own thread, a commit after each fetched batch. It sends
  records of the shape tidings sends (binary mode: the model's JSON as the value, the
  CloudEvents attributes as ``ce_*`` headers), built by hand inside its clock as its
  users would (``bench._contest.by_hand``; librdkafka's murmur2 partitioner, tidings'
  partitioning); its consumer reads each record's ``ce_type`` (what it must know to
  route) and validates the value into the same pydantic model before calling its
  handler.
- ``raw_prebuilt`` (informational): the same client sending tidings' very records,
  built before the clock starts, and a consumer that reads no header: what the client
  alone can do, the baseline of the runs before 2026-12 (docs/benchmarks.md).
- ``aiokafka``: aiokafka at its defaults (acks=1, no idempotence, linger 0), records
  made by hand as the raw client's, a commit after each handled batch; and
  ``aiokafka_all``, its producer with acks=all and tidings' linger (2 ms), still not
  idempotent (its idempotent producer fails on Tansu): the client users compare with.
- ``faststream``: ``faststream.kafka.KafkaBroker`` (aiokafka), as its documentation
  shows it: pydantic model messages, ``@broker.subscriber(..., ack_policy=AckPolicy.ACK)``
  (commit after the handler returns), ``broker.publish``. aiokafka's idempotent
  producer fails on Tansu (decision 0005), so it publishes with acks=all *without*
  idempotence; its per-message log lines are off (``logger=None``): tidings and the
  raw loop write none either.

Every contestant gets the same events, keys (200, partition by Kafka's murmur2, which
``tidings.partitioning`` and aiokafka's default partitioner share), topic of 8
partitions, fetch wait (10 ms) and session timeout (2 s). The events, tidings'
contestant and the measurements are ``bench/_contest.py``'s, shared with NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._contest import (
    EVENT_TYPE,
    PARTITIONS,
    SCHEMA,
    Contestant,
    Tally,
    Ticked,
    batch_handler,
    by_hand,
    envelope,
    handler,
)
from bench._contest import (
    RawContestant as RawClient,
)
from tidings.codec.binary import to_kafka
from tidings.partitioning import partition_for
from tidings.transports.kafka import KafkaConfig

MAX_RECORDS = 500  # per raw fetch, as the Worker's fetch_max
FETCH_SECONDS = 0.1  # how long one raw fetch may wait for a first message


# Its Tansu broker and confluent-kafka producer are reused as they are. The module is
# not clean under mypy (its own errors, which are not this module's to fix), so it is
# imported as an untyped module object rather than with `from ... import`.
kafka_clients: Any = importlib.import_module("bench.kafka_clients")


# -- confluent-kafka ---------------------------------------------------------------------


def kafka_record(body: Ticked) -> tuple[bytes, bytes, list[tuple[str, bytes]], int]:
    """(key, value, headers, partition) of the record tidings would write for ``body``."""
    value, headers = to_kafka(envelope(body), "binary")
    assert value is not None  # binary mode: the data
    return body.task_id.encode(), value, headers, partition_for(body.task_id, PARTITIONS)


UNASSIGNED = -1  # confluent-kafka: no partition given, the producer's partitioner picks
TYPE = EVENT_TYPE.encode()
SOURCE = b"bench"
DATASCHEMA = SCHEMA.encode()


def hand_record(body: Ticked) -> tuple[bytes, bytes, list[tuple[str, bytes]], int]:
    """(key, value, headers, partition) of ``body`` in binary mode, made as a user of
    the raw client makes it: the model's JSON, a header per CloudEvents attribute."""
    ident, now = by_hand()
    ident_bytes, key = ident.encode(), body.task_id.encode()
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ident_bytes),
        ("ce_source", SOURCE),
        ("ce_type", TYPE),
        ("ce_time", now.encode()),
        ("ce_subject", key),
        ("content-type", b"application/json"),
        ("ce_dataschema", DATASCHEMA),
        ("ce_correlationid", ident_bytes),
        ("ce_dataversion", b"1"),
    ]
    return key, body.model_dump_json().encode(), headers, UNASSIGNED


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


class RawContestant(RawClient):
    def __init__(self, config: KafkaConfig, *, prebuilt: bool = False) -> None:
        super().__init__(prebuilt=prebuilt)
        self.config = config
        self.producer: Any = None  # a kafka_clients.ConfluentProducer

    hand_made = staticmethod(hand_record)
    tidings_made = staticmethod(kafka_record)

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        # Partitioned by librdkafka (murmur2, as tidings partitions) where not given.
        conf = {**self.config.producer(), "partitioner": "murmur2_random"}
        self.producer = kafka_clients.ConfluentProducer(conf)
        consumers: list[RawConsumer] = []
        tasks: list[asyncio.Task[Any]] = []
        stop = asyncio.Event()
        try:
            for group in groups:
                assert tally is not None
                consumer = RawConsumer(self.config.consumer(group, "earliest"), topic)
                consumers.append(consumer)
                await consumer.start()
                consume = self._consume(consumer, group, tally, stop, routed=not self.prebuilt)
                tasks.append(asyncio.ensure_future(consume))
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
        consumer: RawConsumer, group: str, tally: Tally, stop: asyncio.Event, *, routed: bool
    ) -> None:
        handle = handler(tally, group)
        while not stop.is_set():
            msgs = await consumer.fetch(FETCH_SECONDS)
            if not msgs:
                continue
            offsets: dict[tuple[str, int], int] = {}
            for m in msgs:
                # routed: the event type decides which handler runs, as in any consumer
                # of more than one type (here all are of the one type it handles)
                if not routed or dict(m.headers() or ()).get("ce_type") == TYPE:
                    await handle(Ticked.model_validate_json(m.value()))
                offsets[(m.topic(), m.partition())] = m.offset() + 1
            await consumer.commit(offsets)

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        assert self.producer is not None
        send = self.producer.send
        waits = [
            await send(topic, key, value, partition, headers)
            for key, value, headers, partition in self.records(chunk)
        ]
        await asyncio.gather(*waits)


# -- aiokafka -------------------------------------------------------------------------


class AiokafkaContestant(RawClient):
    """aiokafka (0.14) as its users write it: ``AIOKafkaProducer.send`` of records made
    by hand (as the raw client's: the model's JSON, a ``ce_*`` header per attribute;
    aiokafka's default partitioner, murmur2 as tidings'), and per group an
    ``AIOKafkaConsumer`` whose ``getmany`` batches are handled (the ``ce_type`` read,
    the model validated) and then committed, as the raw loop does.

    ``producer`` holds the producer's settings; none (the default contestant) is
    aiokafka's defaults: acks=1, no idempotence, linger 0, no compression. Its
    idempotent producer cannot be measured here: InitProducerId fails on Tansu
    (UnknownError, checked again 2026-12-07). The consumer takes every contestant's
    fetch wait (10 ms: Tansu answers a waiting fetch only when it runs out) and session
    timeout; the rest is aiokafka's defaults, but for commits: after handling, not
    aiokafka's auto-commit every 5 s, which commits what was not handled yet."""

    name = "aiokafka"

    def __init__(
        self,
        bootstrap: str,
        session_timeout_ms: int,
        heartbeat_ms: int,
        *,
        name: str = "aiokafka",
        producer: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.bootstrap = bootstrap
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.settings = producer or {}
        self.producer: Any = None

    hand_made = staticmethod(hand_record)
    tidings_made = staticmethod(kafka_record)

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **self.settings)
        await self.producer.start()
        consumers: list[Any] = []
        tasks: list[asyncio.Task[Any]] = []
        stop = asyncio.Event()
        try:
            for group in groups:
                assert tally is not None
                consumer = AIOKafkaConsumer(
                    topic,
                    bootstrap_servers=self.bootstrap,
                    group_id=group,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    fetch_max_wait_ms=10,
                    session_timeout_ms=self.session_timeout_ms,
                    heartbeat_interval_ms=self.heartbeat_ms,
                )
                consumers.append(consumer)
                await consumer.start()
                tasks.append(asyncio.ensure_future(self._consume(consumer, group, tally, stop)))
            yield tasks
        finally:
            stop.set()
            if tasks:
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            for consumer in consumers:
                await consumer.stop()
            await self.producer.stop()
            self.producer = None

    @staticmethod
    async def _consume(consumer: Any, group: str, tally: Tally, stop: asyncio.Event) -> None:
        from aiokafka import TopicPartition

        handle = handler(tally, group)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=int(FETCH_SECONDS * 1000),
                                             max_records=MAX_RECORDS)  # fmt: skip
            if not batches:
                continue
            offsets = {}
            for tp, records in batches.items():
                for r in records:
                    if dict(r.headers or ()).get("ce_type") == TYPE:
                        await handle(Ticked.model_validate_json(r.value))
                offsets[TopicPartition(tp.topic, tp.partition)] = records[-1].offset + 1
            await consumer.commit(offsets)

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        send = self.producer.send
        waits = [
            await send(topic, value, key=key, headers=headers,
                       partition=None if partition == UNASSIGNED else partition)
            for key, value, headers, partition in self.records(chunk)
        ]  # fmt: skip
        await asyncio.gather(*waits)


# -- FastStream ------------------------------------------------------------------------


class FastStreamContestant(Contestant):
    name = "faststream"

    def __init__(
        self,
        bootstrap: str,
        session_timeout_ms: int,
        heartbeat_ms: int,
        linger_ms: int,
        *,
        batch: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.linger_ms = linger_ms  # tidings' own, for the same batching delay
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
            linger_ms=self.linger_ms,
            logger=None,  # no log line per message (neither of the others writes one)
        )
        for group in groups:
            assert tally is not None
            handle = (batch_handler if self.batch else handler)(tally, group)
            broker.subscriber(
                topic,
                group_id=group,
                batch=self.batch,
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.ACK,  # commit after the handler returns
                fetch_max_wait_ms=10,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_ms,
            )(handle)
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
