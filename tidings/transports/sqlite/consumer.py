"""A member of a consumer group on the SQLite log: partition leases and fetching.

Several processes share a group by leasing partitions. Each member heartbeats every
third of the lease time: it bumps its member row's ``beat``, removes members whose
beat has not moved for a lease length, and takes or hands back partitions until it
holds its fair share, ``ceil(partitions / live members)``. Before handing a partition
back it lets its owner (the worker) finish and commit what it has in flight.

Time: expiry is judged by each observer's own monotonic clock (a member is dead when
*this* process has seen its beat unchanged for a lease length: the client's
``leases``, a :class:`~tidings.transports._leases.LeaseWatch`), never by comparing
wall-clock stamps written by another process, so a wall-clock step neither expires a
live member nor keeps a dead one alive. The ``expires_ms`` columns are a wall-clock
hint for ``tidings groups`` only. A member whose own renewals have failed for most of
a lease length fences itself: it hands out nothing more and gives its partitions up.

Fencing: every claim of a partition raises its generation (so does a forced offset
reset); records carry the generation they were fetched under, and a commit counts only
while the committing member holds the partition's lease *with that generation*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import os
import socket
import sqlite3
import time
from collections.abc import Mapping

from tidings.transport import (
    FENCE_AFTER,
    Consumer,
    Position,
    Record,
    RevokeCallback,
    StartFrom,
    TopicPartition,
)
from tidings.transports.sqlite.client import LogClient
from tidings.transports.sqlite.samples import record_samples
from tidings.transports.sqlite.sql import generation_base

__all__ = ["SQLiteConsumer"]

log = logging.getLogger("tidings.sqlite")

Claim = tuple[int, int, int, int]  # topic id, partition, generation, committed offset


class SQLiteConsumer(Consumer):
    """A member of ``group`` (see the module doc), on the log of ``client``."""

    def __init__(
        self,
        client: LogClient,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self._client = client
        self._owned: frozenset[TopicPartition] = frozenset()
        self._position: dict[TopicPartition, int] = {}
        self._generation: dict[TopicPartition, int] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._rebalance_lock = asyncio.Lock()
        self._rr = 0
        self._closed = False
        # The worker letting go of the partitions of a self-fencing (see _fence_self).
        self._letting_go: asyncio.Future[None] | None = None
        # Monotonic time at which the last renewal that succeeded was sent.
        self._renewed_at = client.clock.monotonic()

    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    def generation(self, tp: TopicPartition) -> int | None:
        return self._generation.get(tp) if tp in self._owned else None

    async def start(self) -> None:
        for topic in self.topics:
            await self._client.create_topic(topic)
        await self._heartbeat()
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    # -- membership -------------------------------------------------------------

    def _lease_lapsed(self) -> bool:
        """Whether this member's renewals have failed for long enough that another
        member may soon take its partitions."""
        elapsed = self._client.clock.monotonic() - self._renewed_at
        return elapsed >= FENCE_AFTER * self._client.lease_ms / 1000

    async def _heartbeat_loop(self) -> None:
        interval = self._client.lease_ms / 3000
        beat: asyncio.Task[None] | None = None
        try:
            while not self._closed:
                await asyncio.sleep(interval)
                try:
                    if beat is None or beat.done():
                        beat = asyncio.get_running_loop().create_task(self._heartbeat())
                        await asyncio.wait({beat}, timeout=interval)
                        if beat.done():
                            beat.result()  # raise what it raised, to log it below
                    else:
                        # A rebalance is waiting for handlers to finish: keep the member
                        # (and so every lease, the ones being drained too) alive, or
                        # another member would start on the same events.
                        await self._renew()
                except Exception:  # a busy database must not end membership for good
                    log.exception("heartbeat of %s in group %s failed", self.member, self.group)
                if self._owned and self._lease_lapsed():
                    self._fence_self()
        finally:
            if beat is not None and not beat.done():
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await beat

    def _fence_self(self) -> None:
        """Give every partition up at once: renewals failed for most of a lease."""
        lost = self._owned
        log.error(
            "member %s of group %s could not renew its leases for %.1fs; it gives up "
            "%d partition(s) until it can",
            self.member, self.group, self._client.clock.monotonic() - self._renewed_at, len(lost),
        )  # fmt: skip
        self._owned = frozenset()  # fetch hands out nothing of them from now on
        for tp in lost:
            self._position.pop(tp, None)
            self._generation.pop(tp, None)
        if self.on_revoke is not None:
            # The worker drops their lanes; its commits of them count only if nobody
            # has claimed them since (their lease generation is still this member's).
            # The next heartbeat waits for it before claiming anything again: records
            # of a new claim must not land in lanes that are being dropped.
            self._letting_go = asyncio.ensure_future(self.on_revoke(lost))
            self._letting_go.add_done_callback(_log_failure)

    async def _let_go(self) -> None:
        """Wait until the worker has let go of what a self-fencing gave up."""
        if self._letting_go is not None:
            with contextlib.suppress(Exception):  # logged by _log_failure
                await asyncio.shield(self._letting_go)
            self._letting_go = None

    async def _renew(self) -> None:
        await self._client.fault("heartbeat")
        sent = self._client.clock.monotonic()
        expires = self._client.clock.time_ms() + self._client.lease_ms
        args = (expires, self.group, self.member)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE members SET beat=beat+1, expires_ms=? WHERE grp=? AND member=?", args
            )

        await self._client.write(job, durable=False)
        self._renewed_at = sent

    async def _heartbeat(self) -> None:
        async with self._rebalance_lock:
            if self._closed:
                return
            await self._let_go()
            await self._client.fault("heartbeat")
            for topic in self.topics:  # deleted (tidings topics delete --force): made again
                if topic not in self._client.topic_ids:
                    await self._client.create_topic(topic)
            ids = {t: self._client.topic_ids[t] for t in self.topics}
            believed = {
                (ids[t][0], p): self._generation[(t, p)]
                for t, p in self._owned
                if (t, p) in self._generation
            }
            sent = self._client.clock.monotonic()
            kept, claimed, excess, gone = await self._client.write(
                lambda c: self._heartbeat_tx(c, ids, believed), durable=False
            )
            self._renewed_at = sent
            for name, (tid, _) in ids.items():
                if tid in gone:  # deleted by another process: made again at the next beat
                    self._client.forget(name, tid)
            names = {tid: name for name, (tid, _) in ids.items()}
            # Lost: owned here, but the lease is gone or has another generation
            # (expired, or removed by an offset reset), even if this very heartbeat
            # claimed it again.
            lost = self._owned - frozenset((names[tid], p) for tid, p in kept)
            if lost:
                log.warning(
                    "member %s lost %d partition(s) of group %s (lease expired or reset)",
                    self.member,
                    len(lost),
                    self.group,
                )
                self._owned = self._owned - lost
                await self._revoked(lost)
            for tid, p, generation, offset in claimed:
                tp = (names[tid], p)
                self._position[tp] = offset
                self._generation[tp] = generation
            self._owned = self._owned | frozenset((names[tid], p) for tid, p, _, _ in claimed)
            if excess:
                give = frozenset((names[tid], p) for tid, p in excess)
                self._owned = self._owned - give  # fetch stops here; commits still count
                await self._revoked(give)
                await self._client.fault("lease")
                # If this fails, the next heartbeat hands them back: a lease held
                # here that this member does not believe it holds is released.
                await self._client.write(lambda c: self._release_tx(c, excess), durable=False)
                self._client.appended.notify()  # another member of this process may take them now

    async def _revoked(self, partitions: frozenset[TopicPartition]) -> None:
        try:
            if self.on_revoke is not None:
                await self.on_revoke(partitions)
        finally:
            for tp in partitions:
                self._position.pop(tp, None)
                self._generation.pop(tp, None)

    def _heartbeat_tx(
        self,
        conn: sqlite3.Connection,
        ids: dict[str, tuple[int, int]],
        believed: dict[tuple[int, int], int],
    ) -> tuple[list[tuple[int, int]], list[Claim], list[tuple[int, int]], set[int]]:
        """Beat, remove expired members, hand back leases this member does not know it
        holds, claim up to the fair share; return (kept, claimed, excess) and the ids
        of the topics deleted since they were looked up."""
        live = self._beat_tx(conn)
        leased = self._leases_tx(conn, believed)
        me = self.member
        kept: list[tuple[int, int]] = []
        claimed: list[Claim] = []
        excess: list[tuple[int, int]] = []
        now = self._client.clock.time_ms()
        wanted = [tid for tid, _ in ids.values()]
        marks = ",".join("?" * len(wanted))
        query = f"SELECT id FROM topics WHERE id IN ({marks})"
        gone = set(wanted) - {r[0] for r in conn.execute(query, wanted)}
        # A fair share of each topic (as Kafka's range assignor does), not of all the
        # partitions together: a group also reads its small retry topic, and a member
        # holding only that one would have nothing to do.
        for tid, count in ids.values():
            if tid in gone:
                continue
            parts = [(tid, p) for p in range(count)]
            held = [tp for tp in parts if leased.get(tp) == me]
            kept.extend(held)
            target = math.ceil(count / max(live, 1))
            if len(held) < target:
                # Spread claims: start at a place that depends on the member, so that
                # two members joining at once do not reach for the same partitions.
                free = [tp for tp in parts if tp not in leased]
                if free:
                    shift = hash(me) % len(free)
                    free = free[shift:] + free[:shift]
                for tp in free[: target - len(held)]:
                    claimed.append(self._claim_tx(conn, tp, now))
                    held.append(tp)
            excess.extend(held[target:])
        record_samples(conn, self.group, self.member, now)  # lag health (tidings groups)
        return kept, claimed, excess, gone

    def _beat_tx(self, conn: sqlite3.Connection) -> int:
        """Move this member's beat, remove the members whose beat stood still for a
        lease (and their leases); return how many members are live."""
        watch = self._client.leases
        g, me = self.group, self.member
        expires = self._client.clock.time_ms() + self._client.lease_ms
        conn.execute(
            "INSERT INTO members(grp, member, host, pid, expires_ms, beat) VALUES (?,?,?,?,?,0)"
            " ON CONFLICT(grp, member) DO UPDATE SET expires_ms=excluded.expires_ms,"
            " beat=beat+1",
            (g, me, socket.gethostname(), os.getpid(), expires),
        )
        live = 0
        for member, beat in conn.execute(
            "SELECT member, beat FROM members WHERE grp=?", (g,)
        ).fetchall():
            if member != me and watch.expired((g, member), beat):
                log.warning("group %s: member %s stopped beating; its leases end", g, member)
                conn.execute("DELETE FROM members WHERE grp=? AND member=?", (g, member))
                watch.forget((g, member))
            else:
                live += 1
        conn.execute(
            "DELETE FROM leases WHERE grp=? AND member NOT IN"
            " (SELECT member FROM members WHERE grp=?)",
            (g, g),
        )
        return live

    def _leases_tx(
        self, conn: sqlite3.Connection, believed: dict[tuple[int, int], int]
    ) -> dict[tuple[int, int], str]:
        """The group's leases, (topic id, partition) -> member, after handing back the
        ones this member holds without believing it (not in ``believed`` with that
        generation)."""
        g, me = self.group, self.member
        leased: dict[tuple[int, int], str] = {}
        for tid, p, member, generation in conn.execute(
            "SELECT topic_id, partition, member, generation FROM leases WHERE grp=?", (g,)
        ).fetchall():
            if member == me and believed.get((tid, p)) != generation:
                # A claim whose start never completed, or a release that failed: this
                # member does not read it, so it must not keep it.
                conn.execute(
                    "DELETE FROM leases WHERE grp=? AND topic_id=? AND partition=?", (g, tid, p)
                )
                continue
            leased[(tid, p)] = member
        return leased

    def _claim_tx(self, conn: sqlite3.Connection, tp: tuple[int, int], now: int) -> Claim:
        """Lease the free partition ``tp`` (topic id, partition) under a new generation;
        a group's first claim writes its start (``start_from``) as its offset: fixed."""
        g = self.group
        column = "start_offset" if self.start_from == "earliest" else "next_offset"
        conn.execute(
            "INSERT OR IGNORE INTO group_offsets(grp, topic_id, partition, offset,"
            f" updated_ms, generation) SELECT ?, ?, ?, {column}, ?, ? FROM partitions"
            " WHERE topic_id=? AND partition=?",
            (g, *tp, now, generation_base(tp[0]), *tp),
        )
        generation, offset = conn.execute(
            "UPDATE group_offsets SET generation=generation+1"
            " WHERE grp=? AND topic_id=? AND partition=?"
            " RETURNING generation, offset",
            (g, *tp),
        ).fetchone()
        conn.execute(
            "INSERT INTO leases(grp, topic_id, partition, member, expires_ms,"
            " generation) VALUES (?,?,?,?,?,?)",
            (g, *tp, self.member, now + self._client.lease_ms, generation),
        )
        return (*tp, int(generation), int(offset))

    def _release_tx(self, conn: sqlite3.Connection, parts: list[tuple[int, int]]) -> None:
        conn.executemany(
            "DELETE FROM leases WHERE grp=? AND topic_id=? AND partition=? AND member=?",
            [(self.group, tid, p, self.member) for tid, p in parts],
        )

    # -- reading and committing ------------------------------------------------------

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout  # a wait, not a lease: the real clock
        appended = self._client.appended
        appended.watch()
        while True:
            wake = appended.event
            records = self._fetch_once(max_records)
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await appended.wait(remaining)
            if not wake.is_set() and time.monotonic() >= deadline:
                return []

    def _fetch_once(self, max_records: int) -> list[Record]:
        owned = sorted(self._owned)
        if not owned or self._lease_lapsed():
            return []
        self._rr = (self._rr + 1) % len(owned)
        owned = owned[self._rr :] + owned[: self._rr]
        positions = [(tp, self._position[tp]) for tp in owned if tp in self._position]
        # On the loop's thread, with no await: no rebalance can run in between. The
        # positions move only once every read succeeded: a read that fails half-way
        # (the file locked past the timeout, an I/O error) loses nothing.
        out, advanced = self._client.read_inline(
            lambda conn: self._read(conn, positions, max_records)
        )
        self._position.update(advanced)
        return out

    def _read(
        self,
        conn: sqlite3.Connection,
        positions: list[tuple[TopicPartition, int]],
        max_records: int,
    ) -> tuple[list[Record], list[tuple[TopicPartition, int]]]:
        """Up to ``max_records`` records from ``positions``, shared out among the
        partitions that have any, and the position after each partition's last one.

        The partitions' ends first, in one query, so that a partition with nothing
        new costs no query of its own and the others share all of ``max_records``, a
        partition with less than its share leaving the rest to the others (a group
        reads its retry topic too, mostly empty: a fixed share of every partition
        halved every fetch). Not in one explicit read transaction: measured, that made
        a fetch slower in wall time (1.05 -> 1.95 us per record), for no gain in CPU.
        """
        ids = self._client.topic_ids
        wanted: list[tuple[TopicPartition, int, int]] = []  # (tp, topic id, position)
        for tp, pos in positions:
            known = ids.get(tp[0])
            if known is not None:  # else deleted here; the next heartbeat takes it away
                wanted.append((tp, known[0], pos))
        if not wanted:
            return [], []
        return self._read_rows(conn, wanted, max_records)

    def _read_rows(
        self, conn: sqlite3.Connection, wanted: list[tuple[TopicPartition, int, int]], room: int
    ) -> tuple[list[Record], list[tuple[TopicPartition, int]]]:
        tids = sorted({tid for _, tid, _ in wanted})
        ends = dict(
            conn.execute(
                "SELECT topic_id << 32 | partition, next_offset FROM partitions"
                f" WHERE topic_id IN ({','.join('?' * len(tids))})",
                tids,
            ).fetchall()
        )
        behind = [
            (tp, tid, pos, end - pos)
            for tp, tid, pos in wanted
            if (end := ends.get(tid << 32 | tp[1], 0)) > pos
        ]
        # Smallest backlog first: what a partition leaves of its share goes to the next
        # (stable: partitions with equal backlogs stay in the round-robin order).
        behind.sort(key=operator.itemgetter(3))
        generations = self._generation
        out: list[Record] = []
        advanced: list[tuple[TopicPartition, int]] = []
        left = len(behind)
        for (topic, p), tid, pos, backlog in behind:
            limit = min(backlog, max(1, room // left))
            left -= 1
            if room <= 0:
                break
            rows = conn.execute(
                "SELECT offset, ts, key, value FROM events WHERE topic_id=?"
                " AND partition=? AND offset >= ? ORDER BY offset LIMIT ?",
                (tid, p, pos, limit),
            ).fetchall()
            if rows:
                gen = generations[(topic, p)]  # tuple.__new__: Record's, without its frame
                out += [tuple.__new__(Record, (topic, p, o, ts, k, v, gen)) for o, ts, k, v in rows]
                advanced.append(((topic, p), rows[-1][0] + 1))
                room -= len(rows)
        return out, advanced

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        if not offsets:
            return
        ids = self._client.topic_ids
        now = self._client.clock.time_ms()
        g, me = self.group, self.member
        rows = [
            (off, now, g, ids[t][0], p, g, ids[t][0], p, me, generation)
            for (t, p), (off, generation) in offsets.items()
            if t in ids  # a topic deleted meanwhile has no offsets to move
        ]

        def job(conn: sqlite3.Connection) -> None:
            # Counted only under the lease this member holds with the records'
            # generation (the row exists: a claim creates it).
            conn.executemany(
                "UPDATE group_offsets SET offset=?, updated_ms=?"
                " WHERE grp=? AND topic_id=? AND partition=? AND EXISTS (SELECT 1 FROM leases"
                " WHERE grp=? AND topic_id=? AND partition=? AND member=? AND generation=?)",
                rows,
            )

        await self._client.write(job, durable=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        g, me = self.group, self.member

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE grp=? AND member=?", (g, me))
            conn.execute("DELETE FROM members WHERE grp=? AND member=?", (g, me))

        async with self._rebalance_lock:
            self._owned = frozenset()
            await self._let_go()
            await self._client.write(job, durable=False)
        self._client.appended.notify()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("giving partitions up failed", exc_info=task.exception())
