"""Appends: the transport's one idempotent librdkafka producer. Its delivery reports,
served by a poll thread, resolve one asyncio future per append with
``call_soon_threadsafe``; the partition is chosen by ``tidings.partitioning`` (Kafka's
murmur2), so a key lands where it would on the other transports and with Kafka's Java
producer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
from collections.abc import Sequence
from typing import Any

from tidings.codec.binary import HeaderMap, Headers
from tidings.errors import RecordRejected
from tidings.partitioning import partition_for
from tidings.transports.kafka.config import KafkaConfig
from tidings.transports.kafka.errors import translate

__all__ = ["MESSAGE_MAX_BYTES", "Producer"]

FLUSH_TIMEOUT = 30.0  # seconds close waits for what is queued to be delivered
MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
ROOM_TRIES = 1000  # polls of 10 ms waiting for room in a full local queue

# One record to send: key, then value and headers in binary mode (tidings.codec.binary).
Outgoing = tuple[str | None, tuple[bytes | None, Headers | HeaderMap]]


class Producer:
    """The librdkafka producer (``native``, set while open) and its poll thread."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.native: Any = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        # A record larger than this is refused by librdkafka at produce (RecordRejected).
        self.max_record = MESSAGE_MAX_BYTES

    def open(self) -> None:
        from confluent_kafka import Producer as RdProducer

        settings = self.config.producer()
        self.native = RdProducer(settings)
        with contextlib.suppress(ValueError):  # librdkafka took it: an integer
            self.max_record = int(settings.get("message.max.bytes", MESSAGE_MAX_BYTES))
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        # Delivery reports are served here; each resolves its future on the loop.
        while not self._stop.is_set():
            self.native.poll(0.1)

    async def close(self) -> None:
        """Deliver what is queued (for up to ``FLUSH_TIMEOUT``), then stop polling."""
        await asyncio.to_thread(self.native.flush, FLUSH_TIMEOUT)
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)
        self.native = self._poller = None

    def send(
        self, topic: str, count: int, records: Sequence[Outgoing]
    ) -> asyncio.Future[list[tuple[int, int]]]:
        """Queue ``records`` for ``topic`` (of ``count`` partitions); the future is
        their (partition, offset) in the order given, once every one is delivered."""
        limit = self.max_record
        for i, (key, (value, _)) in enumerate(records):
            # What librdkafka would refuse at produce, refused before anything of this
            # append is queued (a lower bound of its size: headers are left out).
            size = (len(value) if value else 0) + (len(key.encode()) if key else 0)
            if size > limit:
                raise RecordRejected(
                    f"append to {topic!r}: record {i + 1} of {len(records)} is too large: "
                    f"{size} bytes, over the producer's message.max.bytes ({limit}); "
                    "sending it again fails alike"
                )
        acks = _Acks(asyncio.get_running_loop(), topic, len(records))
        produce, report = self.native.produce, acks.report
        for i, (key, (value, headers)) in enumerate(records):
            raw_key = None if key is None else key.encode()
            partition = partition_for(key, count)
            done = functools.partial(report, i)
            try:
                try:  # produce only queues; a full queue is the rare case
                    produce(
                        topic,
                        value,
                        raw_key,
                        partition=partition,
                        headers=headers,
                        on_delivery=done,
                    )
                except BufferError:
                    self._produce_when_room(topic, value, raw_key, partition, headers, done)
            except Exception as exc:  # records before it may be appended all the same
                raise translate(
                    exc, f"append to {topic!r}: record {i + 1} of {len(records)}"
                ) from exc
        return acks.future

    def _produce_when_room(
        self, topic: str, value: Any, key: Any, partition: int, headers: Any, cb: Any
    ) -> None:
        """Produce once the full local queue has room (BufferError if it stays full)."""
        for attempt in range(ROOM_TRIES):  # it drains as the poll thread delivers
            self.native.poll(0.01)
            try:
                self.native.produce(
                    topic, value, key, partition=partition, headers=headers, on_delivery=cb
                )
                return
            except BufferError:
                if attempt == ROOM_TRIES - 1:
                    raise


class _Acks:
    """The delivery reports of one append, awaited as one future: settled on the loop
    once every record is acknowledged (with their (partition, offset) in the order
    given), or at the first failure. Reports arrive on whichever thread polls the
    producer; the loop is woken once per append, not once per record."""

    __slots__ = ("_count", "future", "loop", "placed", "topic", "total")

    def __init__(self, loop: asyncio.AbstractEventLoop, topic: str, total: int) -> None:
        self.loop = loop
        self.topic = topic
        self.total = total
        self.future: asyncio.Future[list[tuple[int, int]]] = loop.create_future()
        self.placed: list[tuple[int, int]] = [(-1, -1)] * total
        self._count = itertools.count(1)  # next() is atomic: reports may come from two threads

    def report(self, index: int, err: Any, msg: Any) -> None:  # on a polling thread
        if err is not None:
            exc = translate(err, f"append to {self.topic!r} failed")
            self.loop.call_soon_threadsafe(_settle, self.future, None, exc)
            return
        self.placed[index] = (msg.partition(), msg.offset())
        if next(self._count) == self.total:
            self.loop.call_soon_threadsafe(_settle, self.future, self.placed, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
