"""A member of a consumer group on NATS JetStream, pulling the partitions it holds.

Which partitions a member holds is settled by its leases (``membership``); for each,
it pulls from the group's durable consumer of the partition (``<group>-<partition>``,
``groups``), buffers what comes for the worker's ``fetch``, and acknowledges on
``commit``.

A member that takes a partition over resets the durable consumer to its ack floor if
anything was delivered and not acknowledged (a former owner's tail): deliveries start
again at the first unacknowledged event, in order, instead of after ``ack_wait``.
Commits are acks, sent only for partitions held under the records' generation: a
former owner cannot acknowledge for the new one. While an event waits in a handler
(retries, slow work), the member marks it in progress every heartbeat once it is
older than half of ``ack_wait``, so the server does not redeliver it behind the
handler's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from tidings.errors import TransportError
from tidings.transport import Position, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.nats.errors import translate
from tidings.transports.nats.groups import GroupClient, consumer_name
from tidings.transports.nats.membership import GroupMember
from tidings.transports.nats.records import KEY_HEADER, record_value
from tidings.transports.nats.streams import stream_name

__all__ = ["PULL_EXPIRES", "NatsConsumer"]

log = logging.getLogger("tidings.nats")

PULL_EXPIRES = 5.0  # seconds a pull request waits on the server for messages
COMMIT_TIMEOUT = 10.0  # seconds a commit waits for the server's answer to its last ack


class _Partition:
    """What one member holds of one owned partition."""

    __slots__ = (
        "acks",
        "buffer",
        "consumer",
        "generation",
        "inbox",
        "last_cseq",
        "next",
        "partition",
        "pull_at",
        "remaining",
        "resync",
        "stream",
        "sub",
        "topic",
    )

    def __init__(self, topic: str, partition: int, group: str, generation: int) -> None:
        self.topic = topic
        self.partition = partition
        self.generation = generation  # the lease generation its records are fetched under
        self.stream = stream_name(topic)
        self.consumer = consumer_name(group, partition)
        self.inbox = ""
        self.sub: Any = None
        self.buffer: deque[Record] = deque()
        # Delivered and not yet acknowledged, in delivery (= offset) order:
        # offset -> (ack subject, monotonic time of delivery or last in-progress mark);
        # tuples, which the garbage collector stops tracking, not lists, which it keeps
        # going through while they wait for their commit.
        self.acks: dict[int, tuple[str, float]] = {}
        self.last_cseq = 0
        self.next = 0  # the offset after the last one delivered
        self.remaining = 0  # messages the outstanding pull request may still bring
        self.resync = False  # a reset after lost deliveries is on its way
        self.pull_at = 0.0


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(stream sequence, consumer sequence, timestamp ns) from a JetStream ack subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or the
    form with a domain and an account hash before the stream (12 tokens)."""
    # One split of the whole subject: 0.56 us against 1.00 for splitting the last four
    # tokens off (rsplit) and counting the dots left, measured alone on the subjects of
    # the benchmark's consumers (stream and consumer names of 30-40 characters).
    tokens = reply.split(".")
    base = 5 if len(tokens) == 9 else 7
    return int(tokens[base]), int(tokens[base + 1]), int(tokens[base + 2])


class NatsConsumer(GroupMember):
    def __init__(
        self,
        client: GroupClient,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(client, group, topics, start_from, on_revoke)
        self._parts: dict[TopicPartition, _Partition] = {}
        self._order: list[_Partition] = []  # _owned_parts(), for the _owned it was made of
        self._order_of: frozenset[TopicPartition] | None = None
        self._wake = asyncio.Event()
        self._rr = 0

    def generation(self, tp: TopicPartition) -> int | None:
        part = self._parts.get(tp)
        if part is None or tp not in self._owned or not self._fresh(tp):
            return None
        return part.generation

    # -- the partitions held ----------------------------------------------------------

    async def _take(self, tp: TopicPartition) -> None:
        """Start pulling a partition just leased: reset its consumer past a former
        owner's unacknowledged tail, then ask for messages."""
        topic, partition = tp
        info = await self.client.ensure_consumer(self.group, topic, partition, self.start_from)
        part = _Partition(topic, partition, self.group, self._gens[tp])
        if int(info.get("num_ack_pending", 0)) or int(info.get("num_redelivered", 0)):
            await self.client.reset_consumer(topic, part.consumer, 0)
        nc = self.client.connection()
        part.inbox = nc.new_inbox()

        async def deliver(msg: Any) -> None:
            self._deliver(part, msg)

        part.sub = await nc.subscribe(part.inbox, cb=deliver)
        self._parts[tp] = part
        self._owned = self._owned | {tp}
        await self._pull(part)

    async def _drop(self, tps: frozenset[TopicPartition]) -> None:
        """Stop pulling ``tps``: what was delivered and not acknowledged stays pending on
        the server, for the next owner's reset. Acks for them stay possible until the
        leases are released, so that ``on_revoke`` can commit."""
        self._owned = self._owned - tps
        subs = []
        for tp in tps:
            part = self._parts.get(tp)
            if part is not None:
                part.buffer.clear()
                if part.sub is not None:
                    subs.append(part.sub)
                    part.sub = None
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if subs:
            # The server must have dropped the pull requests (their inboxes have no
            # interest now) before another member resets the consumer and pulls.
            with contextlib.suppress(Exception):
                await self.client.connection().flush(5)

    def _discard(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def _tend(self) -> None:
        self._mark_in_progress()
        self._repull_stalled()

    # -- pulls and deliveries ---------------------------------------------------------

    async def _pull(self, part: _Partition) -> None:
        if part.sub is None or part.remaining > 0:
            return
        batch = self.client.config.fetch_batch
        if len(part.buffer) >= batch:
            return  # fetch() asks again once the worker has taken some
        part.remaining = batch
        part.pull_at = time.monotonic()
        request = orjson.dumps({"batch": batch, "expires": int(PULL_EXPIRES * 1e9)})
        try:
            await self.client.connection().publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{part.stream}.{part.consumer}",
                request,
                reply=part.inbox,
            )
        except Exception as exc:
            part.remaining = 0  # the heartbeat asks again
            log.warning("pull on %s/%s failed: %s", part.stream, part.consumer, exc)

    def _deliver(self, part: _Partition, msg: Any) -> None:
        headers = msg.headers
        if not msg.reply:  # a status: 408 the request expired, 409 it ended otherwise
            if headers and headers.get("Status") in ("408", "409", "404"):
                part.remaining = 0
                if part.sub is not None:
                    asyncio.get_running_loop().create_task(self._pull(part))
            return
        if part.sub is None:
            return  # dropped: stays pending for the next owner
        sseq, cseq, ns = _ack_fields(msg.reply)
        part.remaining -= 1
        if part.resync:
            if cseq != 1:
                return  # sent before this member's reset: it comes again after it
            part.resync = False
        elif cseq == 1 and part.last_cseq:
            self._reset_under(part)  # delivery sequences restart only at a reset
            return
        elif part.last_cseq and cseq != part.last_cseq + 1:
            # Deliveries were lost on the way (a server or a route went down): going on
            # would hand later events over before the lost ones. Start again at the ack
            # floor; what comes again and is held here is recognised below.
            part.resync = True
            asyncio.get_running_loop().create_task(self._resync(part))
            return
        part.last_cseq = cseq
        offset = sseq - 1
        now = time.monotonic()
        if offset in part.acks:  # delivered again while held: keep the newest ack subject
            part.acks[offset] = (msg.reply, now)
            return
        if sseq <= part.next:
            # Handled and committed here, but the acknowledgment was lost: ack it again
            # instead of handling it twice, out of order.
            asyncio.get_running_loop().create_task(self._ack_again(msg.reply))
            return
        part.next = sseq
        part.acks[offset] = (msg.reply, now)
        key = headers.get(KEY_HEADER) if headers else None
        part.buffer.append(
            Record(
                part.topic,
                part.partition,
                offset,
                ns // 1_000_000,
                key,
                record_value(msg.data, headers),
                part.generation,
            )
        )
        self._wake.set()
        if part.remaining <= 0:
            asyncio.get_running_loop().create_task(self._pull(part))

    def _reset_under(self, part: _Partition) -> None:
        """Deliveries restarted, and this member asked for no reset: the group's offsets
        were reset under it without taking its lease first (a forced reset does). What
        it holds is void, and so are the positions its worker would commit: it gives
        the partition up at once (fenced), and claims it again under a new generation."""
        tp = (part.topic, part.partition)
        if tp in self._leases:
            self._lose_now(frozenset({tp}), "the group's offsets were reset", release=True)
        part.buffer.clear()
        part.acks.clear()

    async def _resync(self, part: _Partition) -> None:
        log.warning(
            "member %s: deliveries of %s[%d] were lost on the way; resuming at the ack floor",
            self.member,
            part.topic,
            part.partition,
        )
        while part.sub is not None:  # until it works, or the partition is gone
            try:
                await self.client.reset_consumer(part.topic, part.consumer, 0)
                break
            except TransportError as exc:
                log.warning("member %s: reset of %s failed: %s", self.member, part.consumer, exc)
                await asyncio.sleep(1.0)
        part.remaining = 0
        part.last_cseq = 0
        await self._pull(part)

    async def _ack_again(self, reply: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.connection().publish(reply, b"+ACK")

    def _mark_in_progress(self) -> None:
        """Tell the server that events held longer than half of ack_wait are still
        being worked on, so it does not redeliver them."""
        limit = time.monotonic() - self.client.config.ack_wait / 2
        nc = self.client.connection()
        for part in self._parts.values():
            acks = part.acks
            for offset, (reply, since) in acks.items():
                if since < limit:
                    acks[offset] = (reply, time.monotonic())  # a value replaced, not a key
                    asyncio.get_running_loop().create_task(nc.publish(reply, b"+WPI"))

    def _repull_stalled(self) -> None:
        # A pull request lost with a server (a cluster node restarting) never answers.
        stale = time.monotonic() - PULL_EXPIRES - 2
        for part in self._parts.values():
            if part.remaining > 0 and part.pull_at < stale:
                part.remaining = 0
                asyncio.get_running_loop().create_task(self._pull(part))

    def reconnected(self) -> None:
        """After a reconnect, outstanding pull requests may be gone: ask again."""
        for part in self._parts.values():
            part.remaining = 0
            asyncio.get_running_loop().create_task(self._pull(part))
        self._kick.set()

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            out = self._take_buffered(max_records)
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return []
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the wait in a
            # task of its own, and a delivery reached the worker three loop turns after
            # _deliver instead of one (a turn is where other work cuts in).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    def _owned_parts(self) -> list[_Partition]:
        """The owned partitions being pulled, in order; recomputed only when the
        assignment changes (``_owned`` is replaced, never changed in place)."""
        owned = self._owned
        if self._order_of is not owned:
            self._order = [self._parts[tp] for tp in sorted(owned) if tp in self._parts]
            self._order_of = owned
        return self._order

    def _take_buffered(self, max_records: int) -> list[Record]:
        if self.client.clock.monotonic() >= self._fence_at:
            self._fence_expired()
        parts = self._owned_parts()
        if not parts:
            return []
        self._rr = (self._rr + 1) % len(parts)
        if self._rr:
            parts = parts[self._rr :] + parts[: self._rr]
        out: list[Record] = []
        per = max(1, max_records // len(parts))
        for part in parts:
            room = min(per, max_records - len(out))
            if room <= 0:
                break
            buffer = part.buffer
            if len(buffer) <= room:
                out += buffer
                buffer.clear()
            else:
                out += [buffer.popleft() for _ in range(room)]
            if part.remaining <= 0 and len(buffer) < self.client.config.fetch_batch:
                asyncio.get_running_loop().create_task(self._pull(part))
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        nc = self.client.connection()
        last: list[str] = []
        self._fence_expired()
        for tp, (offset, generation) in offsets.items():
            part = self._parts.get(tp)
            if part is None or generation != part.generation or not self._fresh(tp):
                # Not held (any more), held under another generation than the records'
                # (lost and claimed again, or reset), or not renewed for a lease: fenced.
                continue
            if offset > part.next:
                # Past what was delivered here (a position set without reading): the
                # consumer restarts there, which acknowledges everything below it.
                part.acks.clear()
                part.next = offset
                await self.client.reset_consumer(part.topic, part.consumer, offset + 1)
                continue
            acks = part.acks
            subjects = []
            while acks:
                first = next(iter(acks))
                if first >= offset:
                    break
                subjects.append(acks.pop(first)[0])
            if not subjects:
                continue
            try:
                for subject in subjects[:-1]:
                    await nc.publish(subject, b"+ACK")
            except Exception as exc:
                doing = f"commit of group {self.group!r} on {tp[0]}[{tp[1]}] failed"
                raise translate(
                    exc, self.client.url, doing, hint="the events will be handled again"
                ) from exc
            last.append(subjects[-1])
        if not last:
            return
        # The last ack of each partition waits for the server's answer: the consumer
        # handles its acks in order, so the answer covers the ones before it.
        results = await asyncio.gather(
            *(nc.request(subject, b"+ACK", timeout=COMMIT_TIMEOUT) for subject in last),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise translate(
                failed[0],
                self.client.url,
                f"{len(failed)} commit(s) of group {self.group!r} failed",
                hint="the events will be handled again",
                within=COMMIT_TIMEOUT,
            ) from failed[0]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kick.set()
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.client.closed:
            return
        async with self._lock:
            with contextlib.suppress(Exception):
                if self._watch is not None:
                    await self._watch.unsubscribe()
            with contextlib.suppress(Exception):
                await self._drop(frozenset(self._parts))
                await self._release(sorted(self._parts))
                await self.client.put_entry(
                    f"{self.group}.m.{self.member}", b"", ttl=self.client.config.lease, delete=True
                )
