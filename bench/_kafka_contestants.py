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
    PARTITIONS,
    Contestant,
    Tally,
    Ticked,
    batch_handler,
    envelope,
    handler,
)
from tidings.partitioning import partition_for
from tidings.transports.kafka_config import KafkaConfig
from tidings.transports.kafka_wire import to_kafka

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
        handle = handler(tally, group)
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
