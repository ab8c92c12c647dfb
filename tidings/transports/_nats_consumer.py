"""A member of a consumer group on NATS JetStream: partition leases and pulls.

A group has one durable pull consumer per topic partition (``<group>-<partition>``),
shared by its members; each partition is pulled by one member at a time, which is
what keeps a key's events in order. Who pulls what is settled in the ``tidings-groups``
KV bucket, as the SQLite log settles it in its tables:

- each member keeps a key ``<group>.m.<member>`` alive (a time to live of ``lease``,
  renewed every third of it), and a lease key ``<group>.l.<topic>.<partition>`` per
  partition it owns, renewed with compare-and-set on the key's sequence, so a member
  that lost a lease finds out instead of overwriting. Lease keys have no time to live:
  another member's lease is expired when unchanged for a lease of the observer's own
  monotonic clock, and a member whose renewals have failed for a lease fences itself;
- a lease's generation is the sequence of the write that claimed it: records carry
  it, and a commit under another generation is dropped;
- a member claims free partitions up to its fair share of each topic,
  ``ceil(partitions / live members)``, and hands back the excess after its owner (the
  worker) has committed what it had in flight (``on_revoke``);
- members listen to the group's keys, so a join, a leave or a handed-back partition
  is acted on at once rather than at the next heartbeat.

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
import math
import os
import socket
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from tidings.errors import TransportError
from tidings.transport import (
    FENCE_AFTER,
    Consumer,
    Position,
    Record,
    RevokeCallback,
    StartFrom,
    TopicPartition,
)
from tidings.transports.nats import (
    GROUPS_PREFIX,
    KEY_HEADER,
    consumer_name,
    record_value,
    reset_marker,
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
        # The lease generation of each held partition: the sequence of the bucket write
        # that claimed it (sequences only grow, so a claim always gets a new one).
        self._gens: dict[TopicPartition, int] = {}
        # Monotonic time (the transport's clock) when the last successful renewal of
        # each held lease was sent; a lease length after it, the member fences itself.
        self._renewed: dict[TopicPartition, float] = {}
        self._fence_at = math.inf  # min(_renewed) + lease: when to look again
        # Other members' lease keys as this member saw them: key -> (sequence, when it
        # was first seen). A lease unchanged for a lease length of this clock is expired.
        self._seen: dict[str, tuple[int, float]] = {}
        self._counts: dict[str, int] = {}
        self._known_members: set[str] = set()
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._watch: Any = None
        self._rr = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._losing: set[TopicPartition] = set()  # lost; on_revoke not yet done
        self._closed = False
        self._started = False

    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    def generation(self, tp: TopicPartition) -> int | None:
        part = self._parts.get(tp)
        if part is None or tp not in self._owned or not self._fresh(tp):
            return None
        return part.generation

    # -- fencing ----------------------------------------------------------------------

    async def _fault(self, point: str) -> None:
        hook = self.t.fault_hook
        if hook is not None:
            await hook(point)

    def _fresh(self, tp: TopicPartition) -> bool:
        """Whether this member may still act on ``tp``: it holds the lease, and renewed
        it less than FENCE_AFTER of a lease length ago by its own monotonic clock (an
        observer takes the lease a whole length after it saw the renewal: the margin
        keeps an ack already on its way from landing after a new claim)."""
        renewed = self._renewed.get(tp)
        return (
            tp in self._leases
            and renewed is not None
            and self.t.clock.monotonic() - renewed < FENCE_AFTER * self.t.config.lease
        )

    def _renew(self, tp: TopicPartition, seq: int, sent: float) -> None:
        self._leases[tp] = seq
        self._renewed[tp] = sent
        self._fence_at = min(self._renewed.values()) + self.t.config.lease

    def _forget_lease(self, tp: TopicPartition) -> int | None:
        self._owned = self._owned - {tp}
        self._gens.pop(tp, None)
        self._renewed.pop(tp, None)
        self._fence_at = (
            min(self._renewed.values()) + self.t.config.lease if self._renewed else math.inf
        )
        return self._leases.pop(tp, None)

    def _fence_expired(self) -> None:
        """Fence the partitions whose renewals have failed for a lease length (finding 8
        of issue 15): from now on nothing of them is handed out or acknowledged, and
        the worker is told (``on_revoke``) so that it drops their lanes; the commits it
        makes there are refused, since another member may own them by now."""
        if self.t.clock.monotonic() < self._fence_at:
            return
        expired = frozenset(tp for tp in self._renewed if not self._fresh(tp))
        if expired:
            self._lose_now(expired, "its lease renewals failed for a lease length")

    def _lose_now(self, tps: frozenset[TopicPartition], why: str, release: bool = False) -> None:
        """Fence ``tps`` at once (no await), then drop them and run ``on_revoke`` in a
        task; with ``release``, delete their lease keys after it (to claim them again
        under a new generation)."""
        log.warning(
            "member %s lost %d partition(s) of group %s (%s): %s",
            self.member,
            len(tps),
            self.group,
            why,
            ", ".join(f"{t}[{p}]" for t, p in sorted(tps)),
        )
        self._losing |= tps
        keys = {}
        for tp in tps:
            seq = self._forget_lease(tp)
            if seq is not None:
                keys[self._lease_key(tp)] = seq
        task = asyncio.get_running_loop().create_task(self._lost(tps, keys if release else None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lost(
        self, tps: frozenset[TopicPartition], release: dict[str, int] | None = None
    ) -> None:
        try:
            await self._drop(tps)
            for tp in tps:
                self._parts.pop(tp, None)
            if self.on_revoke is not None:
                await self.on_revoke(tps)
            for key, seq in (release or {}).items():
                with contextlib.suppress(TransportError):
                    await self.t.put_entry(
                        key, b"", ttl=self.t.config.lease, expect=seq, delete=True
                    )
        except Exception:
            log.exception("member %s: dropping lost partitions failed", self.member)
        finally:
            self._losing -= tps
            self._kick.set()  # claim again what is free; tell a forced reset it may go on

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
            kind == "l" and (deleted or msg.data[:1] == b"{")  # released, or a forced reset
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
            self._fence_expired()

    async def _heartbeat(self) -> None:
        async with self._lock:
            if self._closed:
                return
            await self._beat()
            self._mark_in_progress()
            self._repull_stalled()

    async def _beat(self) -> None:
        t, g, me, lease = self.t, self.group, self.member, self.t.config.lease
        clock = t.clock
        value = orjson.dumps({"host": socket.gethostname(), "pid": os.getpid()})

        async def member() -> int | None:
            await self._fault("heartbeat")
            return await t.put_entry(f"{g}.m.{me}", value, ttl=lease)

        async def renew(tp: TopicPartition, seq: int) -> int | None:
            await self._fault("lease")
            return await t.put_entry(self._lease_key(tp), me.encode(), expect=seq)

        # Renew the member key and what this member holds all at once: one at a time,
        # each round trip waits its turn on a busy event loop, and a heartbeat of one
        # member with 8 partitions took 1 s under load (11 s profiled: past the lease).
        # A failed compare-and-set means the partition was lost. A renewal counts from
        # when it was sent, and only with the member key's: the key's time to live is
        # how a forced reset (and `tidings groups`) tells a live holder from a gone one.
        owned = sorted(self._leases)
        sent = clock.monotonic()
        answers = await asyncio.gather(
            member(), *(renew(tp, self._leases[tp]) for tp in owned), return_exceptions=True
        )
        alive = not isinstance(answers[0], BaseException)
        lost = set()
        for tp, seq in zip(owned, answers[1:], strict=True):
            if tp not in self._leases:
                continue  # fenced meanwhile
            if seq is None:
                lost.add(tp)
            elif isinstance(seq, int):
                if alive:
                    self._renew(tp, seq, sent)
                else:
                    self._leases[tp] = seq
        # Act on what was lost before anything else, failures included: a member must
        # not go on acknowledging partitions another one may own now.
        if lost:
            self._lose_now(frozenset(lost), "its lease was taken: expired, or an offset reset")
        self._fence_expired()
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed:
            raise failed[0]
        entries = await t.group_entries(g)
        members = {
            k[len(g) + 3 :] for k, (_, v) in entries.items() if k.startswith(f"{g}.m.") and v
        }
        members.add(me)
        self._known_members = members
        now = clock.monotonic()
        leased: set[TopicPartition] = set()
        expect: dict[TopicPartition, int] = {}  # what a claim must name: free or expired
        seen: dict[str, tuple[int, float]] = {}
        stale: set[TopicPartition] = set()
        for key, (seq, held) in entries.items():
            if not key.startswith(f"{g}.l."):
                continue
            topic, _, p = key[len(g) + 3 :].rpartition(".")
            tp = (topic, int(p))
            if held is None:
                expect[tp] = seq  # released: its delete marker
                continue
            if tp in self._leases:
                continue  # this member's
            marker = reset_marker(held)
            if (
                marker is not None
                and marker.get("member") == me
                and not marker.get("fenced")
                and tp not in self._losing
            ):
                # A forced reset took this member's lease; it has dropped the partition
                # and on_revoke has run: tell the reset it may go on.
                done = orjson.dumps({**marker, "fenced": True})
                with contextlib.suppress(TransportError):
                    if await t.put_entry(key, done, expect=seq) is not None:
                        continue
            # Expired when unchanged for a lease length of this member's own monotonic
            # clock (finding 9 of issue 15): no wall clock, no time to live on the server.
            first = self._seen.get(key)
            if first is None or first[0] != seq:
                first = (seq, now)
            seen[key] = first
            if now - first[1] >= lease:
                expect[tp] = seq
                stale.add(tp)
            else:
                leased.add(tp)
        self._seen = seen
        gained: list[TopicPartition] = []
        excess: list[TopicPartition] = []
        try:
            for topic, count in self._counts.items():
                parts = [(topic, p) for p in range(count)]
                held_now = [tp for tp in parts if tp in self._owned]
                target = math.ceil(count / len(members))
                if len(held_now) < target:
                    # Claims start at a place that depends on the member, so that members
                    # joining at once do not all reach for the same partitions.
                    # Not one whose on_revoke still runs: its lanes are being dropped.
                    free = [
                        tp
                        for tp in parts
                        if tp not in leased and tp not in self._leases and tp not in self._losing
                    ]
                    if free:
                        shift = hash(me) % len(free)
                        free = free[shift:] + free[:shift]
                    for tp in free:
                        if len(held_now) >= target:
                            break
                        await self._fault("lease")
                        sent = clock.monotonic()
                        seq = await t.put_entry(
                            self._lease_key(tp), me.encode(), expect=expect.get(tp, 0)
                        )
                        if seq is None:
                            continue
                        if tp in stale:
                            log.warning(
                                "member %s took %s[%d] of group %s over: its lease was not "
                                "renewed for %gs",
                                me,
                                tp[0],
                                tp[1],
                                g,
                                lease,
                            )
                        self._gens[tp] = seq
                        self._renew(tp, seq, sent)
                        held_now.append(tp)
                        gained.append(tp)
                excess.extend(held_now[target:])
        finally:
            # What was claimed is started, or released (a claim that fails half-way
            # must not leave leases renewed and never read).
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
        part = _Partition(topic, partition, self.group, self._gens[tp])
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
            seq = self._forget_lease(tp)
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
            # none: the group's offsets were reset under it without taking its lease
            # first (a forced reset does). What it holds is void, and so are the
            # positions its worker would commit: it gives the partition up at once
            # (fenced), and claims it again under a new generation.
            tp = (part.topic, part.partition)
            if tp in self._leases:
                self._lose_now(frozenset({tp}), "the group's offsets were reset", release=True)
            part.buffer.clear()
            part.acks.clear()
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
        if self.t.clock.monotonic() >= self._fence_at:
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
            if part.remaining <= 0 and len(buffer) < self.t.config.fetch_batch:
                asyncio.get_running_loop().create_task(self._pull(part))
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        nc = self.t.connected()
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
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
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
