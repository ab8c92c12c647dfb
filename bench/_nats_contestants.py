"""The contestants of ``bench/bench_nats.py`` besides tidings (``bench/_contest.py``),
and the streams they all use.

- ``raw``: nats-py with the transport's own stream and consumer settings, read from the
  same ``NatsConfig`` (``parse_nats_url``). Publishing is what ``js.publish`` does,
  pipelined: each message published with a reply inbox (one wildcard subscription for
  the acknowledgments) and a ``Nats-Msg-Id`` header, the acknowledgments of a chunk
  awaited together. It sends messages of the shape tidings sends (structured mode: the
  CloudEvents attributes and the model's data in one JSON document; the same headers),
  built by hand inside its clock as its users would (``bench._contest.by_hand``,
  ``orjson``; tidings' partitioning of subjects). Consuming: one durable pull consumer per
  partition, ``<group>-<partition>``, created with the transport's settings (explicit
  ack, ``ack_wait``, ``max_ack_pending``, ``max_deliver``), pulled as the transport
  pulls (``fetch_batch`` messages a request, 5 s expiry, the next request when one is
  used up or ends), each message acked on its own after its handler; the handler gets
  the JSON body decoded (orjson), its ``type`` read (to route) and its ``data``
  validated into the pydantic model.
- ``raw_prebuilt`` (informational): the same client sending tidings' very messages,
  built before the clock starts, and not reading the type: what the client alone can
  do, the baseline of the runs before 2026-12 (docs/benchmarks.md).
- ``faststream``: ``faststream.nats.NatsBroker`` with a ``JStream`` naming the same
  stream (``declare=False``: every contestant's stream is made by ``stream_config``),
  as its documentation recommends for throughput (and its own warnings recommend as
  the default): a pull subscriber, ``PullSub(batch_size=fetch_batch)`` with its
  default timeout (5 s), one durable consumer per group on the topic's subjects,
  ``AckPolicy.ACK`` (an ack after each handler), a pydantic model handler.
  ``broker.publish(model, subject, stream=...)`` awaits each acknowledgment, so a
  chunk is 1,000 such calls gathered. Its per-message log lines are off
  (``logger=None``), as neither other contestant writes any. ``faststream_batch``
  (``PullSub(batch=True)``: a list of models per call) and ``faststream_push`` (its
  default push consumer, a queue group per group) are measured for information.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from bench._contest import (
    EVENT_TYPE,
    PARTITIONS,
    SCHEMA,
    STOP_SECONDS,
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
from tidings.codec.binary import STRUCTURED_CONTENT_TYPE
from tidings.partitioning import partition_for
from tidings.transports.nats import (
    KEY_HEADER,
    META_PARTITIONS,
    META_TOPIC,
    PULL_EXPIRES,
    TIMEOUT,
    NatsConfig,
    stream_name,
)

# Seconds a FastStream pull may wait to fill its batch: its default (5 s, the
# transport's pull expiry too) for the per-message subscriber, whose pulls return what
# is there at once (a no-wait request first); 0.1 s for the batch subscriber, which
# waits for a full batch until then (5 s would hold every partial batch 5 s).
FASTSTREAM_TIMEOUT = PULL_EXPIRES
FASTSTREAM_BATCH_TIMEOUT = 0.1


def subject_tail(key: str) -> str:
    """``<partition>.<event type>``: the subject tidings publishes an event to, after
    ``<stream>.``."""
    return f"{partition_for(key, PARTITIONS)}.{EVENT_TYPE}"


def stream_config(topic: str, config: NatsConfig) -> Any:
    """The stream the transport creates for ``topic`` (``tidings.transports.nats.streams``),
    as a nats-py ``StreamConfig``; its metadata lets tidings use it as its own."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    settings = config.stream(topic)
    name = stream_name(topic)
    return StreamConfig(
        name=name,
        subjects=[f"{name}.*.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType(settings.storage),
        num_replicas=settings.replicas,
        max_age=settings.max_age or 0,
        max_bytes=settings.max_bytes or -1,
        max_msgs=-1,
        discard=DiscardPolicy.OLD,
        # As the transport: no longer than the stream keeps messages (the server's rule).
        duplicate_window=(
            min(settings.duplicate_window, settings.max_age)
            if settings.max_age
            else settings.duplicate_window
        ),
        allow_direct=True,
        allow_msg_schedules=True,  # the transport's delayed events (append_at)
        metadata={META_TOPIC: topic, META_PARTITIONS: str(PARTITIONS)},
    )


def consumer_config(stream: str, group: str, partition: int, config: NatsConfig) -> Any:
    """The durable consumer of one group partition (``GroupClient.ensure_consumer``)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy

    name = f"{group}-{partition}"
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=f"{stream}.{partition}.>",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=config.ack_wait,
        max_deliver=config.max_deliver,
        max_ack_pending=config.max_ack_pending,
        replay_policy=ReplayPolicy.INSTANT,
    )


# -- nats-py ---------------------------------------------------------------------------


class Publisher:
    """``js.publish`` pipelined: publish with a reply inbox each, one wildcard
    subscription for the answers, a future per message."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.acks: dict[str, asyncio.Future[int]] = {}
        self.next = 0
        self.sub: Any = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.prefix + "*", cb=self._answer)

    async def _answer(self, msg: Any) -> None:
        future = self.acks.pop(msg.subject, None)
        if future is None or future.done():
            return
        answer = orjson.loads(msg.data) if msg.data else {}
        if "seq" in answer:
            future.set_result(answer["seq"])
        else:
            future.set_exception(RuntimeError(f"publish refused: {answer or msg.headers}"))

    async def send(self, subj: str, value: bytes, headers: dict[str, str]) -> asyncio.Future[int]:
        reply = self.prefix + str(self.next)
        self.next += 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.acks[reply] = future
        await self.nc.publish(subj, value, reply=reply, headers=headers)
        return future


def nats_message(body: Ticked) -> tuple[str, bytes, dict[str, str]]:
    """(subject after ``<stream>.``, value, headers) of the message tidings would
    publish for ``body``."""
    value = envelope(body)
    ident = orjson.loads(value)["id"]
    headers = {
        "Content-Type": STRUCTURED_CONTENT_TYPE,
        "Nats-Msg-Id": ident,
        KEY_HEADER: body.task_id,
    }
    return subject_tail(body.task_id), value, headers


def hand_message(body: Ticked) -> tuple[str, bytes, dict[str, str]]:
    """(subject after ``<stream>.``, value, headers) of ``body`` in structured mode,
    made as a user of the raw client makes it: one JSON document (orjson)."""
    ident, now = by_hand()
    doc = {
        "specversion": "1.0",
        "id": ident,
        "source": "bench",
        "type": EVENT_TYPE,
        "time": now,
        "subject": body.task_id,
        "datacontenttype": "application/json",
        "dataschema": SCHEMA,
        "correlationid": ident,
        "dataversion": 1,
        "data": body.model_dump(),
    }
    headers = {
        "Content-Type": STRUCTURED_CONTENT_TYPE,
        "Nats-Msg-Id": ident,
        KEY_HEADER: body.task_id,
    }
    return subject_tail(body.task_id), orjson.dumps(doc), headers


class RawPull:
    """One group partition's durable pull consumer, pulled as the transport pulls:
    ``batch`` messages a request, the next request once those came or the request
    ended (expired, or interrupted: a status message without a reply subject)."""

    def __init__(self, nc: Any, stream: str, name: str, batch: int, cb: Any) -> None:
        self.nc = nc
        self.request = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.body = orjson.dumps({"batch": batch, "expires": int(PULL_EXPIRES * 1e9)})
        self.batch = batch
        self.left = 0
        self.cb = cb
        self.inbox = nc.new_inbox()
        self.sub: Any = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        await self._pull()

    async def _pull(self) -> None:
        self.left = self.batch
        await self.nc.publish(self.request, self.body, reply=self.inbox)

    async def _on_msg(self, msg: Any) -> None:
        if not msg.reply:  # 408: the request expired; 409: it ended otherwise
            await self._pull()
            return
        await self.cb(msg)
        await msg.ack()
        self.left -= 1
        if self.left <= 0:
            await self._pull()

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


class RawContestant(RawClient):
    def __init__(self, address: str, config: NatsConfig, *, prebuilt: bool = False) -> None:
        super().__init__(prebuilt=prebuilt)
        self.address = address
        self.config = config
        self.publisher: Publisher | None = None

    hand_made = staticmethod(hand_message)
    tidings_made = staticmethod(nats_message)

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        import nats

        nc = await nats.connect(f"nats://{self.address}", name="bench-raw")
        js = nc.jetstream(timeout=TIMEOUT)
        pulls: list[RawPull] = []
        try:
            self.publisher = Publisher(nc)
            await self.publisher.start()
            stream = stream_name(topic)
            for group in groups:
                assert tally is not None
                handle = handler(tally, group)

                async def decode(msg: Any, handle: Any = handle) -> None:
                    doc = orjson.loads(msg.data)
                    # the type decides which handler runs, as in any consumer of more
                    # than one type (here all are of the one type it handles)
                    if self.prebuilt or doc["type"] == EVENT_TYPE:
                        await handle(Ticked.model_validate(doc["data"]))

                for p in range(PARTITIONS):
                    conf = consumer_config(stream, group, p, self.config)
                    await js.add_consumer(stream, conf)
                    pull = RawPull(nc, stream, conf.name, self.config.fetch_batch, decode)
                    pulls.append(pull)
                    await pull.start()
            yield []
        finally:
            self.publisher = None
            for pull in pulls:
                await pull.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), STOP_SECONDS)
            await nc.close()

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        assert self.publisher is not None
        send, prefix = self.publisher.send, stream_name(topic) + "."
        messages = self.records(chunk)
        waits = [await send(prefix + tail, value, headers) for tail, value, headers in messages]
        await asyncio.wait_for(asyncio.gather(*waits), TIMEOUT)


# -- FastStream ------------------------------------------------------------------------


class FastStreamContestant(Contestant):
    name = "faststream"

    def __init__(self, address: str, config: NatsConfig, *, variant: str = "") -> None:
        self.address = address
        self.config = config
        self.broker: Any = None
        # "batch": a batch pull subscriber (a list of models per call); "push": its
        # default push consumer. Both informational.
        self.variant = variant
        if variant:
            self.name = f"faststream_{variant}"

    @contextlib.asynccontextmanager
    async def session(
        self, topic: str, groups: Sequence[str], tally: Tally | None
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        from faststream import AckPolicy
        from faststream.nats import JStream, NatsBroker, PullSub
        from nats.js.api import ConsumerConfig

        broker = NatsBroker(f"nats://{self.address}", logger=None)
        stream = JStream(stream_name(topic), declare=False)
        for group in groups:
            assert tally is not None
            handle = (batch_handler if self.variant == "batch" else handler)(tally, group)
            options: dict[str, Any]
            if self.variant == "push":
                # A queue group over a durable push consumer of that name: how FastStream
                # scales a push consumer (with `durable` alone it warns that it cannot).
                options = {"queue": group}
            else:
                options = {
                    "durable": group,
                    "pull_sub": PullSub(
                        batch_size=self.config.fetch_batch,
                        timeout=(
                            FASTSTREAM_BATCH_TIMEOUT
                            if self.variant == "batch"
                            else FASTSTREAM_TIMEOUT
                        ),
                        batch=self.variant == "batch",
                    ),
                }
            broker.subscriber(
                f"{stream.name}.*.>",
                stream=stream,
                config=ConsumerConfig(
                    ack_wait=self.config.ack_wait, max_ack_pending=self.config.max_ack_pending
                ),
                ack_policy=AckPolicy.ACK,  # an ack after the handler returns
                **options,
            )(handle)
        try:
            await broker.start()
            self.broker = broker
            yield []
        finally:
            self.broker = None
            await asyncio.wait_for(broker.stop(), STOP_SECONDS)

    async def send_chunk(self, topic: str, chunk: Any) -> None:
        # broker.publish awaits its acknowledgment: the chunk's calls run together.
        await asyncio.gather(*(self.send_one(topic, body) for body in chunk))

    async def send_one(self, topic: str, body: Ticked) -> None:
        await self.broker.publish(
            body,
            f"{stream_name(topic)}.{subject_tail(body.task_id)}",
            stream=stream_name(topic),
            timeout=TIMEOUT,
        )
