"""Membership of a consumer group on NATS: partition leases, heartbeats, fencing.

Each partition is pulled by one member at a time, which is what keeps a key's events
in order. Who pulls what is settled in the ``tidings-groups`` KV bucket (``groups``),
as the SQLite log settles it in its tables:

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

:class:`GroupMember` is that protocol; the consumer (``consumer``) adds the pulls of
the partitions it holds (``_take``, ``_drop``, ``_discard``, ``_tend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import orjson

from tidings.errors import TransportError
from tidings.transport import FENCE_AFTER, Consumer, RevokeCallback, StartFrom, TopicPartition
from tidings.transports._leases import LeaseWatch
from tidings.transports.nats.errors import NoAnswer, translate
from tidings.transports.nats.groups import GROUPS_PREFIX, GroupClient, reset_marker

__all__ = ["GroupMember"]

log = logging.getLogger("tidings.nats")

# How long a member's first heartbeat is tried again while the servers do not answer,
# in request timeouts: a replicated groups bucket between two leaders answers nothing
# (seen in CI: a 3-node cluster on a busy machine left one write unanswered for 10 s).
JOIN_TRIES_FOR = 3

Entries = dict[str, tuple[int, bytes | None]]


class GroupMember(Consumer):
    """A member of a group: its leases, kept alive, claimed and handed back."""

    def __init__(
        self,
        client: GroupClient,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self.client = client
        self._owned: frozenset[TopicPartition] = frozenset()
        self._leases: dict[TopicPartition, int] = {}  # lease key sequence, for CAS
        # The lease generation of each held partition: the sequence of the bucket write
        # that claimed it (sequences only grow, so a claim always gets a new one).
        self._gens: dict[TopicPartition, int] = {}
        # Monotonic time (the client's clock) when the last successful renewal of each
        # held lease was sent; a lease length after it, the member fences itself.
        self._renewed: dict[TopicPartition, float] = {}
        self._fence_at = math.inf  # min(_renewed) + lease: when to look again
        # Other members' lease keys as this member saw them: a lease whose sequence is
        # unchanged for a lease length of this member's clock is expired.
        self._others: LeaseWatch[str] = LeaseWatch(
            lambda: self.client.clock.monotonic(), self.client.config.lease
        )
        self._counts: dict[str, int] = {}
        self._known_members: set[str] = set()
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._watch: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._losing: set[TopicPartition] = set()  # lost; on_revoke not yet done
        self._closed = False
        self._started = False

    # -- what the consumer does with the partitions it holds ---------------------------

    @abstractmethod
    async def _take(self, tp: TopicPartition) -> None:
        """Start pulling a partition just leased (``_gens[tp]`` is its generation)."""

    @abstractmethod
    async def _drop(self, tps: frozenset[TopicPartition]) -> None:
        """Stop pulling ``tps``; commits of them still count until they are released."""

    @abstractmethod
    def _discard(self, tps: Iterable[TopicPartition]) -> None:
        """Forget what was pulled of ``tps`` (after ``_drop``)."""

    @abstractmethod
    def _tend(self) -> None:
        """Keep the pulls going, at each heartbeat."""

    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    # -- fencing ----------------------------------------------------------------------

    async def _fault(self, point: str) -> None:
        hook = self.client.fault_hook
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
            and self.client.clock.monotonic() - renewed < FENCE_AFTER * self.client.config.lease
        )

    def _renew(self, tp: TopicPartition, seq: int, sent: float) -> None:
        self._leases[tp] = seq
        self._renewed[tp] = sent
        self._fence_at = min(self._renewed.values()) + self.client.config.lease

    def _forget_lease(self, tp: TopicPartition) -> int | None:
        self._owned = self._owned - {tp}
        self._gens.pop(tp, None)
        self._renewed.pop(tp, None)
        self._fence_at = (
            min(self._renewed.values()) + self.client.config.lease if self._renewed else math.inf
        )
        return self._leases.pop(tp, None)

    def _fence_expired(self) -> None:
        """Fence the partitions whose renewals have failed for a lease length (finding 8
        of issue 15): from now on nothing of them is handed out or acknowledged, and
        the worker is told (``on_revoke``) so that it drops their lanes; the commits it
        makes there are refused, since another member may own them by now."""
        if self.client.clock.monotonic() < self._fence_at:
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
            self._discard(tps)
            if self.on_revoke is not None:
                await self.on_revoke(tps)
            for key, seq in (release or {}).items():
                with contextlib.suppress(TransportError):
                    await self.client.put_entry(
                        key, b"", ttl=self.client.config.lease, expect=seq, delete=True
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
            self._counts[topic] = await self.client.ensure_topic(topic)
        await self.client.ensure_bucket()
        nc = self.client.connection()
        try:
            self._watch = await nc.subscribe(f"{GROUPS_PREFIX}{self.group}.>", cb=self._on_change)
        except Exception as exc:
            raise translate(exc, self.client.url, f"watching group {self.group!r} failed") from exc
        await self._join()
        self._task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def _join(self) -> None:
        """The first heartbeat, tried again while the servers do not answer, for up to
        JOIN_TRIES_FOR request timeouts (real time: a test's clock may stand still); an
        error the server answered with fails at once, as does the last no-answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOIN_TRIES_FOR * self.client.client.timeout
        while True:
            try:
                await self._heartbeat()
                return
            except NoAnswer as exc:
                if loop.time() >= deadline:
                    raise
                log.warning(
                    "member %s of group %s: joining, %s; trying again", self.member, self.group, exc
                )
                await asyncio.sleep(min(1.0, self.client.config.lease / 3))

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
        interval = self.client.config.lease / 3
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
            self._tend()

    async def _beat(self) -> None:
        """Renew this member and its leases; then, seeing the group's keys, claim its
        share of what is free or expired, and hand back what is over it."""
        await self._renew_all()
        g, me = self.group, self.member
        entries = await self.client.entries(g)
        members = {
            k[len(g) + 3 :] for k, (_, v) in entries.items() if k.startswith(f"{g}.m.") and v
        }
        members.add(me)
        self._known_members = members
        leased, expect, stale = await self._survey(entries)
        gained: list[TopicPartition] = []
        excess: list[TopicPartition] = []
        try:
            for topic, count in self._counts.items():
                share = math.ceil(count / len(members))
                excess += await self._claim(topic, count, share, leased, expect, stale, gained)
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

    async def _renew_all(self) -> None:
        """Renew the member key and what this member holds all at once: one at a time,
        each round trip waits its turn on a busy event loop, and a heartbeat of one
        member with 8 partitions took 1 s under load (11 s profiled: past the lease).
        A failed compare-and-set means the partition was lost. A renewal counts from
        when it was sent, and only with the member key's: the key's time to live is
        how a forced reset (and `tidings groups`) tells a live holder from a gone one."""
        c, g, me, lease = self.client, self.group, self.member, self.client.config.lease
        value = orjson.dumps({"host": socket.gethostname(), "pid": os.getpid()})

        async def member() -> int | None:
            await self._fault("heartbeat")
            return await c.put_entry(f"{g}.m.{me}", value, ttl=lease)

        async def renew(tp: TopicPartition, seq: int) -> int | None:
            await self._fault("lease")
            return await c.put_entry(self._lease_key(tp), me.encode(), expect=seq)

        owned = sorted(self._leases)
        sent = c.clock.monotonic()
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

    async def _survey(
        self, entries: Entries
    ) -> tuple[set[TopicPartition], dict[TopicPartition, int], set[TopicPartition]]:
        """Other members' leases: those held (``leased``), the sequence a claim must
        name of those free or expired (``expect``), and which of them expired
        (``stale``). Tells a forced reset that took this member's lease it let go."""
        g, me = self.group, self.member
        leased: set[TopicPartition] = set()
        expect: dict[TopicPartition, int] = {}  # what a claim must name: free or expired
        seen: set[str] = set()
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
                    if await self.client.put_entry(key, done, expect=seq) is not None:
                        continue
            # Expired when unchanged for a lease length of this member's own monotonic
            # clock (finding 9 of issue 15): no wall clock, no time to live on the server.
            seen.add(key)
            if self._others.expired(key, seq):
                expect[tp] = seq
                stale.add(tp)
            else:
                leased.add(tp)
        self._others.retain(seen)
        return leased, expect, stale

    async def _claim(
        self,
        topic: str,
        count: int,
        target: int,
        leased: set[TopicPartition],
        expect: dict[TopicPartition, int],
        stale: set[TopicPartition],
        gained: list[TopicPartition],
    ) -> list[TopicPartition]:
        """Claim free partitions of ``topic`` up to ``target``, this member's share
        (adding them to ``gained``); return those held over it, to hand back."""
        me, c = self.member, self.client
        parts = [(topic, p) for p in range(count)]
        held_now = [tp for tp in parts if tp in self._owned]
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
                sent = c.clock.monotonic()
                seq = await c.put_entry(self._lease_key(tp), me.encode(), expect=expect.get(tp, 0))
                if seq is None:
                    continue
                if tp in stale:
                    log.warning(
                        "member %s took %s[%d] of group %s over: its lease was not renewed for %gs",
                        me,
                        tp[0],
                        tp[1],
                        self.group,
                        c.config.lease,
                    )
                self._gens[tp] = seq
                self._renew(tp, seq, sent)
                held_now.append(tp)
                gained.append(tp)
        return held_now[target:]

    def _lease_key(self, tp: TopicPartition) -> str:
        return f"{self.group}.l.{tp[0]}.{tp[1]}"

    async def _release(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._discard((tp,))
            seq = self._forget_lease(tp)
            if seq is not None:
                with contextlib.suppress(TransportError):
                    await self.client.put_entry(
                        self._lease_key(tp),
                        b"",
                        ttl=self.client.config.lease,
                        expect=seq,
                        delete=True,
                    )
