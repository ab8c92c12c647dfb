"""Reads outside any group (``Transport.read``): one assign-only librdkafka consumer,
kept (creating one per read cost ~0.1 s), used by one thread at a time."""

from __future__ import annotations

import threading
import time
from typing import Any

from tidings.transports.kafka.config import KafkaConfig
from tidings.transports.kafka.errors import translate

__all__ = ["READ_TIMEOUT", "Reader"]

READ_TIMEOUT = 10.0  # seconds one read may take to reach its limit or the partition's end


class Reader:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._native: Any = None
        self._lock = threading.Lock()

    def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Any]:
        """Up to ``limit`` messages of ``topic[partition]`` from ``offset`` (blocking:
        run in a thread), fewer at the partition's end or after ``READ_TIMEOUT``."""
        from confluent_kafka import KafkaError
        from confluent_kafka import TopicPartition as RdTopicPartition

        with self._lock:  # one read at a time on the one reader
            if self._native is None:
                from confluent_kafka import Consumer as RdConsumer

                self._native = RdConsumer(self.config.reader())
            reader = self._native
            reader.assign([RdTopicPartition(topic, partition, offset)])
            out: list[Any] = []
            deadline = time.monotonic() + READ_TIMEOUT
            while len(out) < limit and time.monotonic() < deadline:
                for m in reader.consume(limit - len(out), 0.05):
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

    def close(self) -> None:
        with self._lock:
            if self._native is not None:
                self._native.close()
                self._native = None
