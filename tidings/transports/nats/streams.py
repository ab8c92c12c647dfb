"""Topics as JetStream streams: names, subjects, creation and description.

A **topic** is a stream, named after the topic with ``.`` written ``~`` (stream names
cannot hold dots); its subjects are ``<stream>.<partition>.<event type>``, so a NATS
client can subscribe to ``task-events.*.task.created``. The stream's metadata holds
the topic and its partition count: a stream without them was not made by tidings, and
is not taken for a topic. A **partition** is the subject token after the stream name;
an **offset** is the stream sequence minus one (partitions share the stream's
numbering, so offsets are not dense).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tidings.errors import ConfigError, TopicNotFound, TransportError
from tidings.transport import FOREVER, PartitionInfo, TopicInfo, check_topic_name
from tidings.transports.nats.client import JetStreamClient
from tidings.transports.nats.config import StreamSettings
from tidings.transports.nats.errors import STREAM_NAME_IN_USE, NatsApiError

__all__ = ["META_PARTITIONS", "META_TOPIC", "Streams", "stream_name"]

META_TOPIC = "tidings.topic"
META_PARTITIONS = "tidings.partitions"


def stream_name(topic: str) -> str:
    """The stream of ``topic``: the name with ``.`` as ``~`` (a stream name has no dots)."""
    return topic.replace(".", "~")


class Streams:
    """The topics of one connection: their streams, made on first use, and their
    partition counts (which never change), known once looked up."""

    def __init__(self, client: JetStreamClient) -> None:
        self.client = client
        self.partitions: dict[str, int] = {}  # topic -> partitions

    async def ensure(
        self,
        topic: str,
        partitions: int | None = None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> int:
        """The partition count of ``topic``, its stream created if missing."""
        known = self.partitions.get(topic)
        if known is not None:
            return known
        stream = stream_name(topic)
        try:
            info = await self.client.stream_info(stream, topic=topic)
        except TopicNotFound:
            info = await self._add_stream(topic, partitions, retention_ms, retention_bytes)
        count = self._stream_partitions(topic, info)
        self.partitions[topic] = count
        return count

    async def _add_stream(
        self,
        topic: str,
        partitions: int | None,
        retention_ms: int | None,
        retention_bytes: int | None,
    ) -> dict[str, Any]:
        settings: StreamSettings = self.client.config.stream(topic)
        stream = stream_name(topic)
        # FOREVER (dead letters, retries): never expire, whatever the URL sets for all.
        max_age: float | None = settings.max_age
        if retention_ms is not None:
            max_age = None if retention_ms == FOREVER else retention_ms / 1000
        max_bytes = settings.max_bytes
        if retention_bytes is not None:
            max_bytes = None if retention_bytes == FOREVER else retention_bytes
        # nats-server refuses a duplicate window longer than the stream keeps messages.
        window = min(settings.duplicate_window, max_age) if max_age else settings.duplicate_window
        config = {
            "name": stream,
            "subjects": [f"{stream}.*.>"],
            "retention": "limits",
            "storage": settings.storage,
            "num_replicas": settings.replicas,
            "max_age": int((max_age or 0) * 1e9),
            "max_bytes": max_bytes or -1,
            "max_msgs": -1,
            "discard": "old",
            "duplicate_window": int(window * 1e9),
            "allow_direct": True,
            "allow_msg_schedules": True,  # append_at
            "metadata": {
                META_TOPIC: topic,
                META_PARTITIONS: str(partitions or settings.partitions),
            },
        }
        return await self.create_stream(config)

    async def create_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create a stream (or find it made meanwhile by another) and wait until it has
        a leader: a replicated stream answers nothing before its first election."""
        client, stream = self.client, config["name"]
        try:
            info = await client.api(f"STREAM.CREATE.{stream}", config)
        except NatsApiError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:  # not created meanwhile by another
                raise
            info = await client.stream_info(stream)
        deadline = asyncio.get_running_loop().time() + client.timeout
        while "cluster" in info and not info["cluster"].get("leader"):
            if asyncio.get_running_loop().time() > deadline:
                raise TransportError(
                    f"{client.url}: stream {stream!r} has no leader {client.timeout:g}s after "
                    "its creation; are enough JetStream servers up for its replicas?"
                )
            await asyncio.sleep(0.1)
            info = await client.stream_info(stream)
        return info

    def _stream_partitions(self, topic: str, info: Mapping[str, Any]) -> int:
        meta = info.get("config", {}).get("metadata") or {}
        count = meta.get(META_PARTITIONS)
        if meta.get(META_TOPIC) != topic or not str(count).isdecimal():
            raise ConfigError(
                f"{self.client.url}: the stream {stream_name(topic)!r} exists but tidings did "
                f"not create it for topic {topic!r} (its metadata lacks {META_TOPIC} and "
                f"{META_PARTITIONS}); rename one of them"
            )
        return int(str(count))

    async def partitions_of(self, topic: str) -> int:
        """The partition count of an existing topic; TopicNotFound if it has no stream."""
        known = self.partitions.get(topic)
        if known is not None:
            return known
        check_topic_name(topic)
        info = await self.client.stream_info(stream_name(topic), topic=topic)
        count = self._stream_partitions(topic, info)
        self.partitions[topic] = count
        return count

    async def delete(self, topic: str) -> None:
        """Delete the stream of ``topic``, and with it every group's durable consumers
        of it (their ack floors are the groups' offsets). TopicNotFound if it has no
        stream; ConfigError for a stream of that name that tidings did not make."""
        check_topic_name(topic)
        stream = stream_name(topic)
        self.partitions.pop(topic, None)
        info = await self.client.stream_info(stream, topic=topic)
        self._stream_partitions(topic, info)  # only a stream made for this topic
        await self.client.api(f"STREAM.DELETE.{stream}", topic=topic)
        self.partitions.pop(topic, None)

    async def info(self, topic: str) -> TopicInfo:
        count = await self.partitions_of(topic)
        stream = stream_name(topic)
        info = await self.client.stream_info(stream, f"{stream}.*.>")
        return self._describe(topic, count, info)

    def _describe(self, topic: str, count: int, info: Mapping[str, Any]) -> TopicInfo:
        state, config = info.get("state", {}), info.get("config", {})
        first, last = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        start = first - 1 if first > 0 else last
        per = [0] * count
        prefix_len = len(stream_name(topic)) + 1
        for subject, n in (state.get("subjects") or {}).items():
            token = subject[prefix_len:].partition(".")[0]
            if token.isdecimal() and int(token) < count:
                per[int(token)] += int(n)
        total, size = sum(per), int(state.get("bytes", 0))
        max_age = int(config.get("max_age", 0))
        max_bytes = int(config.get("max_bytes", -1))
        return TopicInfo(
            name=topic,
            # NATS counts bytes per stream: each partition gets its share by records.
            partitions=tuple(
                PartitionInfo(p, start, last, size * n // total if total else 0, count=n)
                for p, n in enumerate(per)
            ),
            retention_ms=max_age // 1_000_000 if max_age > 0 else None,
            retention_bytes=max_bytes if max_bytes > 0 else None,
        )

    async def all(self) -> list[TopicInfo]:
        """Every topic: the streams whose metadata names one."""
        out = []
        for info in await self.client.streams():
            meta = info.get("config", {}).get("metadata") or {}
            topic = meta.get(META_TOPIC)
            if topic is None or not str(meta.get(META_PARTITIONS)).isdecimal():
                continue
            self.partitions[topic] = int(meta[META_PARTITIONS])
            out.append(await self.info(topic))
        return sorted(out, key=lambda t: t.name)
