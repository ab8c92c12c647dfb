"""Interoperability on the wire with Kafka clients tidings did not write.

tidings' Kafka transport is librdkafka (confluent-kafka); here the other side is
aiokafka, a pure-Python implementation of the protocol, and ``kcat`` where it is
installed. The records are decoded with the official CloudEvents SDK's Kafka binding
(``cloudevents.core.bindings.kafka`` and the older ``cloudevents.v1.kafka``), so what
tidings writes is checked against the binding's own reading of it, and what tidings
reads was written by the binding.

aiokafka's idempotent producer fails on Tansu, so it produces without idempotence; and
it joins groups slowly there, so it reads by manual assignment, not in a group.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1 import kafka as ce_v1_kafka
from pydantic import BaseModel

from tidings import Context, Tidings
from tidings.codec import decode, encode
from tidings.codec.binary import STRUCTURED_CONTENT_TYPE
from tidings.envelope import Event
from tidings.partitioning import partition_for
from tidings.testing import running

pytestmark = pytest.mark.integration

TOPIC = "orders"
PARTITIONS = 4
DEADLINE = 20.0


class OrderPlaced(BaseModel):
    order_id: str
    total: float


@dataclass(frozen=True, slots=True)
class WireRecord:
    """A Kafka record as another client read it."""

    partition: int
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes | None

    def header(self, name: str) -> bytes:
        found = [v for k, v in self.headers if k == name]
        assert len(found) == 1, f"header {name!r} appears {len(found)} times in {self.headers}"
        return found[0]

    def message(self) -> ce_kafka.KafkaMessage:
        return ce_kafka.KafkaMessage(dict(self.headers), self.key, self.value or b"")


def shop(url: str) -> Tidings:
    app = Tidings(url, service="shop")
    app.event("order.placed", subject="order_id")(OrderPlaced)
    return app


def published(app: Tidings) -> list[Event]:
    """Two events: a typed one keyed by its subject, and a plain one with its own
    partition key, a correlation id and a string extension."""
    return [
        app.build(OrderPlaced(order_id="o-1", total=12.5)),
        app.build(
            {"note": "leave at the door", "lines": [1, 2]},
            type="order.noted",
            subject="o-2",
            key="customer-7",
            correlation_id="req-42",
            extensions={"tenant": "acme"},
        ),
    ]


async def read_with_aiokafka(bootstrap: str, topic: str, count: int) -> list[WireRecord]:
    """Every record of ``topic`` from its start, read by aiokafka outside any group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="interop-reader"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[WireRecord] = []
        deadline = time.monotonic() + DEADLINE
        while len(out) < count:
            assert time.monotonic() < deadline, f"aiokafka read {len(out)} of {count} records"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out += [WireRecord(r.partition, r.key, list(r.headers), r.value) for r in records]
        return out
    finally:
        await consumer.stop()


_kcat_env: dict[str, dict[str, str] | str] = {}  # kcat's path -> its environment, or why not


def kcat_env(kcat: str, bootstrap: str) -> dict[str, str]:
    """The environment to run ``kcat`` in against Tansu.

    kcat as installed if it can talk to Tansu. Debian's kcat 1.7.1 is built on
    librdkafka 2.0.2, which cannot read Tansu 0.6.0's ApiVersions v3 response ("Read
    underflow", then "Broker transport failure"); it then runs on the librdkafka
    that confluent-kafka bundles (LD_PRELOAD), the one the transport's tests use.
    kcat itself, its reading of headers, keys and values and its JSON, is the same.
    """
    if kcat not in _kcat_env:
        _kcat_env[kcat] = _find_kcat_env(kcat, bootstrap)
    env = _kcat_env[kcat]
    if isinstance(env, str):
        pytest.skip(env)
    return env


def _find_kcat_env(kcat: str, bootstrap: str) -> dict[str, str] | str:
    import confluent_kafka

    def talks(env: dict[str, str]) -> bool:
        probe = [kcat, "-b", bootstrap, "-L", "-J", "-m", "3"]
        return subprocess.run(probe, capture_output=True, env=env, timeout=DEADLINE).returncode == 0

    env = dict(os.environ)
    if talks(env):
        return env
    bundled = sorted(
        (Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob(
            "librdkafka*.so*"
        )
    )
    if bundled and talks({**env, "LD_PRELOAD": str(bundled[0])}):
        return {**env, "LD_PRELOAD": str(bundled[0])}
    return "kcat's librdkafka cannot talk to Tansu, and confluent-kafka bundles none to use instead"


def read_with_kcat(kcat: str, bootstrap: str, topic: str) -> list[WireRecord]:
    """Every record of ``topic``, read by ``kcat -C -e -J`` (one JSON envelope a line)."""
    command = [kcat, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"]
    # Tansu answers a fetch only when its wait runs out (docs/kafka.md, difference 5).
    command += ["-X", "fetch.wait.max.ms=10"]
    done = subprocess.run(
        command, capture_output=True, timeout=DEADLINE, check=False, env=kcat_env(kcat, bootstrap)
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out = []
    for line in done.stdout.decode().splitlines():
        doc = json.loads(line)
        flat = doc.get("headers") or []  # [name, value, name, value, ...]
        headers = [(flat[i], flat[i + 1].encode()) for i in range(0, len(flat), 2)]
        key, value = doc["key"], doc["payload"]
        out.append(
            WireRecord(
                doc["partition"],
                None if key is None else key.encode(),
                headers,
                None if value is None else value.encode(),
            )
        )
    return out


def by_id(records: list[WireRecord], binary: bool) -> dict[str, WireRecord]:
    if binary:
        return {r.header("ce_id").decode(): r for r in records}
    return {orjson.loads(r.value or b"")["id"]: r for r in records}


def check_as_written(record: WireRecord, event: Event, binary: bool) -> None:
    """``record`` is ``event`` as the CloudEvents Kafka binding writes it."""
    assert event.key is not None
    assert record.key == event.key.encode()
    # Kafka's murmur2 partitioner, as aiokafka (and the Java client) computes it.
    assert record.partition == DefaultPartitioner()(record.key, list(range(PARTITIONS)), [])
    assert record.partition == partition_for(event.key, PARTITIONS)
    if not binary:
        assert record.headers == [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
        assert record.value is not None
        assert record.value == encode(event)  # the whole document, as tidings encodes it
        assert decode(record.value).id == event.id
        return
    assert record.header("ce_specversion") == b"1.0"
    assert record.header("ce_id") == event.id.encode()
    assert record.header("ce_type") == event.type.encode()
    assert record.header("ce_source") == b"shop"
    assert record.header("ce_subject") == (event.subject or "").encode()
    assert datetime.fromisoformat(record.header("ce_time").decode()) == event.time
    assert record.header("content-type") == b"application/json"
    assert record.header("ce_correlationid") == (event.correlationid or "").encode()
    if event.partitionkey is not None:
        assert record.header("ce_partitionkey") == event.partitionkey.encode()
    names = [name for name, _ in record.headers]
    assert len(names) == len(set(names)), names
    assert all(n.startswith("ce_") or n == "content-type" for n in names), names
    assert record.value is not None
    assert orjson.loads(record.value) == orjson.loads(encode(event))["data"]


def check_sdk_reads(record: WireRecord, event: Event, binary: bool) -> None:
    """The CloudEvents SDK's Kafka binding reads ``record`` as ``event``."""
    read = ce_kafka.from_binary if binary else ce_kafka.from_structured
    ce = read(record.message(), JSONFormat())
    assert ce_kafka.from_kafka(record.message(), JSONFormat()).get_id() == event.id  # the mode
    assert ce.get_id() == event.id
    assert ce.get_type() == event.type
    assert ce.get_source() == event.source
    assert ce.get_subject() == event.subject
    assert ce.get_time() == event.time
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_data() == orjson.loads(encode(event))["data"]
    assert ce.get_extension("correlationid") == event.correlationid
    # The binding reads the record key as the partition key.
    assert ce.get_extension("partitionkey") == event.key
    if event.extensions:
        assert ce.get_extension("tenant") == "acme"
    # The v1 API (cloudevents.v1.kafka), which most existing code still uses.
    message = ce_v1_kafka.KafkaMessage(dict(record.headers), record.key, record.value or b"")
    v1 = (ce_v1_kafka.from_binary if binary else ce_v1_kafka.from_structured)(message)
    assert v1["id"] == event.id
    assert v1["type"] == event.type
    assert v1["source"] == event.source
    assert v1["subject"] == event.subject
    assert v1.data == orjson.loads(encode(event))["data"]


@pytest.fixture
async def orders(kafka_url: str) -> str:
    """The test URL with the topic ``orders`` of 4 partitions created."""
    url = f"{kafka_url}&partitions={PARTITIONS}"
    async with Tidings(url, service="setup") as app:
        await app.transport.create_topic(TOPIC, PARTITIONS)
    return url


FORMATS = [pytest.param(True, id="binary"), pytest.param(False, id="structured")]


def with_format(url: str, binary: bool) -> str:
    return url if binary else f"{url}&format=structured"


# -- tidings writes, another client reads ------------------------------------------


@pytest.mark.parametrize("binary", FORMATS)
async def test_aiokafka_and_the_cloudevents_sdk_read_what_tidings_publishes(
    orders: str, tansu: str, binary: bool
) -> None:
    async with shop(with_format(orders, binary)) as app:
        events = published(app)
        await app.publish_events(TOPIC, events)
    records = by_id(await read_with_aiokafka(tansu, TOPIC, len(events)), binary)
    assert set(records) == {e.id for e in events}
    for event in events:
        check_as_written(records[event.id], event, binary)
        check_sdk_reads(records[event.id], event, binary)


@pytest.mark.parametrize("binary", FORMATS)
async def test_kcat_reads_what_tidings_publishes(orders: str, tansu: str, binary: bool) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat not installed (Debian package kcat)")
    async with shop(with_format(orders, binary)) as app:
        events = published(app)
        await app.publish_events(TOPIC, events)
    records = by_id(await asyncio.to_thread(read_with_kcat, kcat, tansu, TOPIC), binary)
    assert set(records) == {e.id for e in events}
    for event in events:
        check_as_written(records[event.id], event, binary)
        check_sdk_reads(records[event.id], event, binary)


# -- another client writes, tidings reads ------------------------------------------


async def produce_with_aiokafka(
    bootstrap: str, messages: list[tuple[bytes | None, list[tuple[str, bytes]], bytes]]
) -> list[int]:
    """Send (key, headers, value) records to TOPIC one by one; their partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks=1)
    await producer.start()
    try:
        out = []
        for key, headers, value in messages:
            meta = await producer.send_and_wait(TOPIC, value, key=key, headers=headers)
            out.append(meta.partition)
        return out
    finally:
        await producer.stop()


def _sdk_record(
    message: ce_kafka.KafkaMessage,
) -> tuple[bytes | None, list[tuple[str, bytes]], bytes]:
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return key, list(message.headers.items()), message.value


async def test_tidings_handles_typed_events_that_aiokafka_produced(orders: str, tansu: str) -> None:
    sdk_event = CoreEvent(
        {
            "id": "evt-sdk-binary",
            "type": "order.placed",
            "source": "https://shop.example/checkout",
            "subject": "o-9",
            "datacontenttype": "application/json",
            "partitionkey": "o-9",
            "correlationid": "req-5",
        },
        {"order_id": "o-9", "total": 3.5},
    )
    structured_event = CoreEvent(
        {
            "id": "evt-sdk-structured",
            "type": "order.placed",
            "source": "https://shop.example/import",
            "subject": "o-11",
            "datacontenttype": "application/json",
            "partitionkey": "customer-3",
        },
        {"order_id": "o-11", "total": 99.0},
    )
    by_hand = (  # binary mode written by hand, with only the required attributes
        b"o-10",
        [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"evt-by-hand"),
            ("ce_type", b"order.placed"),
            ("ce_source", b"/legacy/connector"),
            ("ce_subject", b"o-10"),
            ("content-type", b"application/json"),
        ],
        b'{"order_id": "o-10", "total": 7}',
    )
    partitions = await produce_with_aiokafka(
        tansu,
        [
            _sdk_record(ce_kafka.to_binary(sdk_event, JSONFormat())),
            by_hand,
            _sdk_record(ce_kafka.to_structured(structured_event, JSONFormat())),
        ],
    )
    # aiokafka placed them with Kafka's murmur2, as tidings would have.
    assert partitions == [partition_for(k, PARTITIONS) for k in ("o-9", "o-10", "customer-3")]

    app = shop(orders)
    got: dict[str, tuple[Any, Context]] = {}

    @app.subscriber(TOPIC, group="orders-reader")
    async def on_order(order: OrderPlaced, ctx: Context) -> None:
        got[ctx.event.id] = (order, ctx)

    async with app, running(app) as worker:
        deadline = time.monotonic() + DEADLINE
        while len(got) < 3 and not worker.stats.dead_lettered:
            assert time.monotonic() < deadline, f"handled {sorted(got)} of 3"
            await asyncio.sleep(0.05)
        assert not worker.stats.dead_lettered, f"dead-lettered: {worker.stats}"

    expected = {
        "evt-sdk-binary": ("o-9", 3.5, "https://shop.example/checkout", "o-9", "o-9", 0),
        "evt-by-hand": ("o-10", 7.0, "/legacy/connector", "o-10", "o-10", 1),
        "evt-sdk-structured": (
            "o-11",
            99.0,
            "https://shop.example/import",
            "o-11",
            "customer-3",
            2,
        ),
    }
    assert set(got) == set(expected)
    for event_id, (order_id, total, source, subject, key, i) in expected.items():
        order, ctx = got[event_id]
        assert isinstance(order, OrderPlaced)
        assert (order.order_id, order.total) == (order_id, total)
        event = ctx.event
        assert (event.id, event.type, event.source) == (event_id, "order.placed", source)
        assert event.subject == subject
        assert event.key == key
        assert event.data == {"order_id": order_id, "total": total}
        assert event.datacontenttype == "application/json"
        assert ctx.partition == partitions[i]
    sdk = got["evt-sdk-binary"][1].event
    assert sdk.correlationid == "req-5"
    assert sdk.time == sdk_event.get_time()
    assert got["evt-by-hand"][1].event.correlationid is None
