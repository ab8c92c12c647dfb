"""One Kafka consumer-group member: a ``confluent_kafka.Consumer`` on its own thread.

``poll`` and the rebalance callbacks run on that thread; ``on_revoke`` is bridged to
the event loop and waited for there, so the owner finishes and commits before librdkafka
gives the partitions up. Commits run on another thread (librdkafka commits are
thread-safe), so that a commit inside ``on_revoke`` does not wait for the blocked poll.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tidings.errors import TransportError
from tidings.transport import Consumer, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.kafka_wire import from_kafka

if TYPE_CHECKING:
    from tidings.transports.kafka import KafkaTransport

__all__ = ["KafkaConsumer"]

log = logging.getLogger("tidings.kafka")

JOIN_TIMEOUT = 120.0  # a librdkafka join takes ~23 s on Tansu; seconds on Apache Kafka
REVOKE_TIMEOUT = 60.0  # how long on_revoke may hold a rebalance


def to_record(msg: Any) -> Record:
    key = msg.key()
    return Record(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.timestamp()[1],
        key.decode("utf-8", "replace") if key is not None else None,
        from_kafka(msg.value(), msg.headers()),
    )


async def _wrap(awaitable: Awaitable[None]) -> None:
    await awaitable


class KafkaConsumer(Consumer):
    def __init__(
        self,
        transport: KafkaTransport,
        group: str,
        topics: Sequence[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._transport = transport
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{group}")
        self._consumer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._assigned_once = threading.Event()
        self._pending: list[Any] = []  # messages polled while waiting for the join
        self._seeks: dict[TopicPartition, int] = {}  # forced resets, applied before a poll
        self._lock = threading.Lock()
        self.closed = False

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, fn, *args)
        except TransportError:
            raise
        except Exception as exc:  # KafkaException and friends, translated here
            raise TransportError(f"Kafka consumer of group {self.group!r}: {exc}") from exc

    # -- rebalance callbacks (consumer thread) -----------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        added = frozenset((tp.topic, tp.partition) for tp in partitions)
        self._assigned = self._assigned | added
        self._assigned_once.set()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = frozenset((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._pending = [m for m in self._pending if (m.topic(), m.partition()) not in gone]
        if gone and self.on_revoke is not None and self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(_wrap(self.on_revoke(gone)), self._loop)
            try:
                future.result(REVOKE_TIMEOUT)
            except Exception:
                log.exception("on_revoke of group %r failed; giving %s up", self.group, gone)
        self._assigned = self._assigned - gone

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Already someone else's: commits would be refused, so on_revoke is not called.
        gone = frozenset((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self._pending = [m for m in self._pending if (m.topic(), m.partition()) not in gone]
        self._assigned = self._assigned - gone

    # -- the protocol --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group; return once the first assignment is known (maybe empty)."""
        self._loop = asyncio.get_running_loop()
        for topic in self.topics:  # subscribing to a missing topic is an error in Kafka
            await self._transport.create_topic(topic)
        conf = self._transport.config.consumer(self.group, self.start_from)
        conf["client.id"] = f"{conf['client.id']}-{self.member}"  # groups() shows it
        await self._run(self._start_sync, conf)
        self._transport._live.add(self)

    def _start_sync(self, conf: dict[str, Any]) -> None:
        from confluent_kafka import Consumer as RdConsumer

        self._consumer = RdConsumer(conf)
        self._consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )  # fmt: skip
        deadline = JOIN_TIMEOUT
        while not self._assigned_once.is_set() and deadline > 0:
            msg = self._consumer.poll(0.1)
            deadline -= 0.1
            if msg is not None and not msg.error():
                self._pending.append(msg)
        if not self._assigned_once.is_set():
            raise TransportError(f"group {self.group!r}: no assignment after {JOIN_TIMEOUT} s")

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        if self._consumer is None or self.closed:
            raise TransportError(f"consumer of group {self.group!r} is not started or closed")
        msgs: list[Any] = await self._run(self._fetch_sync, max_records, timeout)
        return [to_record(m) for m in msgs]

    def _fetch_sync(self, max_records: int, timeout: float) -> list[Any]:
        from confluent_kafka import TopicPartition as RdTopicPartition

        with self._lock:
            seeks, self._seeks = self._seeks, {}
        for (topic, partition), offset in seeks.items():
            if (topic, partition) in self._assigned:
                self._consumer.seek(RdTopicPartition(topic, partition, offset))
        with self._lock:
            if seeks:
                self._pending = [
                    m for m in self._pending if (m.topic(), m.partition()) not in seeks
                ]
            if self._pending:
                out, self._pending = self._pending[:max_records], self._pending[max_records:]
                return out
        # poll for the first record (returns as soon as one arrives), then take what is
        # queued without waiting: consume(n, timeout) alone would wait for n or timeout.
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        msgs = [first]
        if max_records > 1:
            msgs += self._consumer.consume(max_records - 1, 0)
        out = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.fatal():
                raise TransportError(f"group {self.group!r}: {err.str()}")
            else:
                log.warning("group %r: %s", self.group, err.str())
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit synchronously; offsets of partitions not owned now are dropped (fenced)."""
        from confluent_kafka import TopicPartition as RdTopicPartition

        owned = self._assigned
        tps = [RdTopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in owned]
        if not tps or self._consumer is None:
            return
        try:
            # Not on the consumer thread: it may be blocked in on_revoke, awaiting this.
            await asyncio.to_thread(self._consumer.commit, offsets=tps, asynchronous=False)
        except Exception as exc:
            if self._fenced(exc):
                log.info("group %r: commit refused, partitions moved on: %s", self.group, exc)
                return
            raise TransportError(f"group {self.group!r}: commit failed: {exc}") from exc

    @staticmethod
    def _fenced(exc: Exception) -> bool:
        from confluent_kafka import KafkaError

        err = exc.args[0] if exc.args else None
        return isinstance(err, KafkaError) and err.code() in (
            KafkaError.ILLEGAL_GENERATION,
            KafkaError.UNKNOWN_MEMBER_ID,
            KafkaError.REBALANCE_IN_PROGRESS,
            KafkaError._STATE,
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    def seek_soon(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Move owned partitions of ``topic`` before the next fetch (a forced reset)."""
        with self._lock:
            self._seeks.update({(topic, p): o for p, o in offsets.items()})

    async def close(self) -> None:
        """Leave the group (on_revoke runs for what is owned); commit nothing."""
        if self.closed:
            return
        self.closed = True
        self._transport._live.discard(self)
        try:
            if self._consumer is not None:
                await self._run(self._consumer.close)
        finally:
            self._assigned = frozenset()
            self._thread.shutdown(wait=False)
