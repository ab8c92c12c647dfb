"""A member of a consumer group on NATS JetStream: partition leases and pulls.

A group has one durable pull consumer per topic partition (``<group>-<partition>``),
shared by its members; each partition is pulled by one member at a time, which is
what keeps a key's events in order. Who pulls what is settled in the ``tidings-groups``
KV bucket, as the SQLite log settles it in its tables:

- each member keeps a key ``<group>.m.<member>`` alive (a time to live of ``lease``,
  renewed every third of it), and a lease key ``<group>.l.<topic>.<partition>`` per
  partition it owns, renewed with compare-and-set on the key's sequence, so a member
  that lost a lease (it stalled past its lease) finds out instead of overwriting;
- a member claims free partitions up to its fair share of each topic,
  ``ceil(partitions / live members)``, and hands back the excess after its owner (the
  worker) has committed what it had in flight (``on_revoke``);
- members listen to the group's keys, so a join, a leave or a handed-back partition
  is acted on at once rather than at the next heartbeat.

A member that takes a partition over resets the durable consumer to its ack floor if
anything was delivered and not acknowledged (a former owner's tail): deliveries start
again at the first unacknowledged event, in order, instead of after ``ack_wait``.
Commits are acks, sent only for owned partitions: a former owner cannot acknowledge
for the new one. While an event waits in a handler (retries, slow work), the member
marks it in progress every heartbeat once it is older than half of ``ack_wait``, so
the server does not redeliver it behind the handler's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from tidings.errors import TransportError
from tidings.transport import Consumer, Position, Record, RevokeCallback, StartFrom, TopicPartition
from tidings.transports.nats import (
    GROUPS_PREFIX,
    KEY_HEADER,
    consumer_name,
    record_value,
    stream_name,
)

if TYPE_CHECKING:
    from tidings.transports.nats import NatsTransport

__all__ = ["NatsConsumer"]

log = logging.getLogger("tidings.nats")

PULL_EXPIRES = 5.0  # seconds a pull request waits on the server for messages


class _Partition:
    """What one member holds of one owned partition."""

    __slots__ = (
        "acks",
        "buffer",
        "consumer",
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

    def __init__(self, topic: str, partition: int, group: str) -> None:
        self.topic = topic
        self.partition = partition
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


class NatsConsumer(Consumer):
    def __init__(
        self,
        transport: NatsTransport,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self.t = transport
        self._parts: dict[TopicPartition, _Partition] = {}
        self._owned: frozenset[TopicPartition] = frozenset()
        self._order: list[_Partition] = []  # _owned_parts(), for the _owned it was made of
        self._order_of: frozenset[TopicPartition] | None = None
        self._leases: dict[TopicPartition, int] = {}  # lease key sequence, for CAS
        self._counts: dict[str, int] = {}
        self._known_members: set[str] = set()
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._watch: Any = None
        self._rr = 0
        self._closed = False
        self._started = False

    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    def generation(self, tp: TopicPartition) -> int | None:
        return 0 if tp in self._owned else None

    # -- membership -------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for topic in self.topics:
            self._counts[topic] = await self.t._ensure_topic(topic)
        await self.t.ensure_groups_bucket()
        nc = self.t.connected()
        self._watch = await nc.subscribe(f"{GROUPS_PREFIX}{self.group}.>", cb=self._on_change)
        await self._heartbeat()
        self._task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def _on_change(self, msg: Any) -> None:
        # Act at once on a join, a leave, or a partition handed back; a member's or a
        # lease's routine renewal changes nothing.
        key = msg.subject[len(GROUPS_PREFIX) + len(self.group) + 1 :]
        kind, _, rest = key.partition(".")
        deleted = bool(msg.headers) and msg.headers.get("KV-Operation") in ("DEL", "PURGE")
        joined_or_left = kind == "m" and rest != self.member
        if (joined_or_left and (deleted or rest not in self._known_members)) or (
            kind == "l" and deleted
        ):
            self._kick.set()

    async def _heartbeats(self) -> None:
        interval = self.t.config.lease / 3
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            self._kick.clear()
            if self._closed:
                return
            try:
                await self._heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken connection must not end membership for good
                log.exception("heartbeat of %s in group %s failed", self.member, self.group)

    async def _heartbeat(self) -> None:
        async with self._lock:
            if self._closed:
                return
            await self._beat()
            self._mark_in_progress()
            self._repull_stalled()

    async def _beat(self) -> None:
        t, g, me, lease = self.t, self.group, self.member, self.t.config.lease
        value = orjson.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        # Renew the member key and what this member holds all at once: one at a time,
        # each round trip waits its turn on a busy event loop, and a heartbeat of one
        # member with 8 partitions took 1 s under load (11 s profiled: past the lease).
        # A failed compare-and-set means the partition was lost.
        owned = sorted(self._owned)
        answers = await asyncio.gather(
            t.put_entry(f"{g}.m.{me}", value, ttl=lease),
            *(
                t.put_entry(self._lease_key(tp), me.encode(), ttl=lease, expect=self._leases[tp])
                for tp in owned
            ),
            return_exceptions=True,
        )
        lost = set()
        for tp, seq in zip(owned, answers[1:], strict=True):
            if seq is None:
                lost.add(tp)
            elif isinstance(seq, int):
                self._leases[tp] = seq
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed:
            raise failed[0]
        if lost:
            log.warning(
                "member %s lost %d partition(s) of group %s (its lease expired)",
                me,
                len(lost),
                g,
            )
            await self._drop(frozenset(lost))
            if self.on_revoke is not None:
                await self.on_revoke(frozenset(lost))
        entries = await t.group_entries(g)
        members = {
            k[len(g) + 3 :] for k, (_, v) in entries.items() if k.startswith(f"{g}.m.") and v
        }
        members.add(me)
        self._known_members = members
        leased: set[TopicPartition] = set()
        last_seq: dict[TopicPartition, int] = {}  # a released lease's delete marker
        for key, (seq, holder) in entries.items():
            if key.startswith(f"{g}.l."):
                topic, _, p = key[len(g) + 3 :].rpartition(".")
                if holder is None:
                    last_seq[(topic, int(p))] = seq
                else:
                    leased.add((topic, int(p)))
        gained: list[TopicPartition] = []
        excess: list[TopicPartition] = []
        for topic, count in self._counts.items():
            parts = [(topic, p) for p in range(count)]
            held = [tp for tp in parts if tp in self._owned]
            target = math.ceil(count / len(members))
            if len(held) < target:
                # Claims start at a place that depends on the member, so that members
                # joining at once do not all reach for the same partitions.
                free = [tp for tp in parts if tp not in leased]
                if free:
                    shift = hash(me) % len(free)
                    free = free[shift:] + free[:shift]
                for tp in free:
                    if len(held) >= target:
                        break
                    seq = await t.put_entry(
                        self._lease_key(tp), me.encode(), ttl=lease, expect=last_seq.get(tp, 0)
                    )
                    if seq is not None:
                        self._leases[tp] = seq
                        held.append(tp)
                        gained.append(tp)
            excess.extend(held[target:])
        for tp in gained:
            try:
                await self._take(tp)
            except Exception:
                log.exception("member %s could not take %s over", me, tp)
                await self._release([tp])
        if excess:
            give = frozenset(excess)
            await self._drop(give)  # fetch stops here; commits still count
            if self.on_revoke is not None:
                await self.on_revoke(give)
            await self._release(sorted(give))

    def _lease_key(self, tp: TopicPartition) -> str:
        return f"{self.group}.l.{tp[0]}.{tp[1]}"

    async def _take(self, tp: TopicPartition) -> None:
        """Start pulling a partition just leased: reset its consumer past a former
        owner's unacknowledged tail, then ask for messages."""
        topic, partition = tp
        info = await self.t.ensure_consumer(self.group, topic, partition, self.start_from)
        part = _Partition(topic, partition, self.group)
        if int(info.get("num_ack_pending", 0)) or int(info.get("num_redelivered", 0)):
            await self.t.reset_consumer(topic, part.consumer, 0)
        nc = self.t.connected()
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
                await self.t.connected().flush(5)

    async def _release(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)
            seq = self._leases.pop(tp, None)
            self._owned = self._owned - {tp}
            if seq is not None:
                with contextlib.suppress(TransportError):
                    await self.t.put_entry(
                        self._lease_key(tp), b"", ttl=self.t.config.lease, expect=seq, delete=True
                    )

    # -- pulls and deliveries ---------------------------------------------------------

    async def _pull(self, part: _Partition) -> None:
        if part.sub is None or part.remaining > 0:
            return
        batch = self.t.config.fetch_batch
        if len(part.buffer) >= batch:
            return  # fetch() asks again once the worker has taken some
        part.remaining = batch
        part.pull_at = time.monotonic()
        request = orjson.dumps({"batch": batch, "expires": int(PULL_EXPIRES * 1e9)})
        try:
            await self.t.connected().publish(
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
            # Delivery sequences restart only at a reset, and this member asked for
            # none: the group's offsets were reset under it (forced). What it holds
            # is void; it starts again where the reset put the consumer.
            part.buffer.clear()
            part.acks.clear()
            part.next = 0
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
            )
        )
        self._wake.set()
        if part.remaining <= 0:
            asyncio.get_running_loop().create_task(self._pull(part))

    async def _resync(self, part: _Partition) -> None:
        log.warning(
            "member %s: deliveries of %s[%d] were lost on the way; resuming at the ack floor",
            self.member,
            part.topic,
            part.partition,
        )
        while part.sub is not None:  # until it works, or the partition is gone
            try:
                await self.t.reset_consumer(part.topic, part.consumer, 0)
                break
            except TransportError as exc:
                log.warning("member %s: reset of %s failed: %s", self.member, part.consumer, exc)
                await asyncio.sleep(1.0)
        part.remaining = 0
        part.last_cseq = 0
        await self._pull(part)

    async def _ack_again(self, reply: str) -> None:
        with contextlib.suppress(Exception):
            await self.t.connected().publish(reply, b"+ACK")

    def _mark_in_progress(self) -> None:
        """Tell the server that events held longer than half of ack_wait are still
        being worked on, so it does not redeliver them."""
        limit = time.monotonic() - self.t.config.ack_wait / 2
        nc = self.t.connected()
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
            if part.remaining <= 0 and len(buffer) < self.t.config.fetch_batch:
                asyncio.get_running_loop().create_task(self._pull(part))
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        nc = self.t.connected()
        last: list[str] = []
        for tp, (offset, _generation) in offsets.items():
            part = self._parts.get(tp)
            if part is None or tp not in self._leases:
                continue  # not owned (any more): fenced
            if offset > part.next:
                # Past what was delivered here (a position set without reading): the
                # consumer restarts there, which acknowledges everything below it.
                part.acks.clear()
                part.next = offset
                await self.t.reset_consumer(part.topic, part.consumer, offset + 1)
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
            for subject in subjects[:-1]:
                await nc.publish(subject, b"+ACK")
            last.append(subjects[-1])
        if not last:
            return
        # The last ack of each partition waits for the server's answer: the consumer
        # handles its acks in order, so the answer covers the ones before it.
        results = await asyncio.gather(
            *(nc.request(subject, b"+ACK", timeout=10) for subject in last),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise TransportError(
                f"{self.t.url}: {len(failed)} commit(s) of group {self.group!r} got no answer "
                f"({failed[0]!r}); the events will be handled again"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kick.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.t.nc is None:
            return
        async with self._lock:
            with contextlib.suppress(Exception):
                if self._watch is not None:
                    await self._watch.unsubscribe()
            with contextlib.suppress(Exception):
                await self._drop(frozenset(self._parts))
                await self._release(sorted(self._parts))
                await self.t.put_entry(
                    f"{self.group}.m.{self.member}", b"", ttl=self.t.config.lease, delete=True
                )
