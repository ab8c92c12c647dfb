"""Reads outside any group (``Transport.read``): one assign-only librdkafka consumer,
kept (creating one per read cost ~0.1 s), used by one thread at a time.

Two waits of librdkafka are cut here, both paid by every worker's start (its
dead-letter topics are read then), ``tail``, ``trace`` and the dashboard:

- a topic this consumer has not read yet: assigned without more, its first message or
  end came only after librdkafka's next look at unknown topics, once a second
  (0.9-1.0 s per topic on Tansu); a metadata request for it first answers at once
  (5-10 ms);
- the end of a partition: ``consume(n, timeout)`` returns when it has ``n`` messages
  or the timeout ran out, even after the end was reported, so every read to the end
  took at least the timeout; ``poll`` returns at the first message or event.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tidings.transports.kafka.config import KafkaConfig
from tidings.transports.kafka.errors import translate

__all__ = ["READ_TIMEOUT", "Reader"]

READ_TIMEOUT = 10.0  # seconds one read may take to reach its limit or the partition's end
POLL = 0.05  # seconds one poll waits for a message or the end


class Reader:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._native: Any = None
        self._known: set[str] = set()  # topics whose metadata the consumer has
        self._lock = threading.Lock()

    def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Any]:
        """Up to ``limit`` messages of ``topic[partition]`` from ``offset`` (blocking:
        run in a thread), fewer at the partition's end or after ``READ_TIMEOUT``."""
        from confluent_kafka import KafkaError
        from confluent_kafka import TopicPartition as RdTopicPartition

        with self._lock:  # one read at a time on the one reader
            reader = self._consumer(topic)
            reader.assign([RdTopicPartition(topic, partition, offset)])
            out: list[Any] = []
            deadline = time.monotonic() + READ_TIMEOUT
            while len(out) < limit and time.monotonic() < deadline:
                first = reader.poll(POLL)  # at the first message, or the partition's end
                if first is None:
                    continue
                more = limit - len(out) - 1
                for m in [first, *reader.consume(more, 0)] if more > 0 else [first]:
                    if m.topic() != topic or m.partition() != partition:
                        continue  # left over from an earlier read
                    err = m.error()
                    if err is None:
                        # after the last one taken (compacted or expired offsets
                        # leave gaps; stale messages of an earlier read come before)
                        if m.offset() >= (out[-1].offset() + 1 if out else offset):
                            out.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        return out
                    else:
                        raise translate(err, f"read {topic}[{partition}]")
            return out

    def _consumer(self, topic: str) -> Any:
        """The reader's consumer (lock held), with the metadata of ``topic``."""
        if self._native is None:
            from confluent_kafka import Consumer as RdConsumer

            self._native = RdConsumer(self.config.reader())
            self._known.clear()
        if topic not in self._known:
            self._native.list_topics(topic, timeout=READ_TIMEOUT)
            self._known.add(topic)
        return self._native

    def close(self) -> None:
        with self._lock:
            if self._native is not None:
                self._native.close()
                self._native = None
