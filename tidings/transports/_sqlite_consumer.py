"""A member of a consumer group on the SQLite log: partition leases and fetching.

Several processes share a group by leasing partitions. Each member heartbeats every
third of the lease time: it renews its leases, removes members and leases that have
expired (a SIGKILLed worker's), and takes or hands back partitions until it holds its
fair share, ``ceil(partitions / live members)``. Before handing a partition back it
lets its owner (the worker) finish and commit what it has in flight. A commit is
accepted only from the member holding the lease, so a former owner that wakes up late
can never move the group's offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.transport import (
    Consumer,
    Position,
    Record,
    RevokeCallback,
    StartFrom,
    TopicPartition,
)
from tidings.transports._sqlite_sql import translate_error

if TYPE_CHECKING:
    from tidings.transports.sqlite import SQLiteTransport

__all__ = ["SQLiteConsumer"]

log = logging.getLogger("tidings.sqlite")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLiteConsumer(Consumer):
    def __init__(
        self,
        transport: SQLiteTransport,
        group: str,
        topics: list[str],
        start_from: StartFrom,
        on_revoke: RevokeCallback | None,
    ) -> None:
        super().__init__(group, topics, start_from, on_revoke)
        self.t = transport
        self._owned: frozenset[TopicPartition] = frozenset()
        self._position: dict[TopicPartition, int] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._rebalance_lock = asyncio.Lock()
        self._rr = 0
        self._closed = False

    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    def generation(self, tp: TopicPartition) -> int | None:
        return 0 if tp in self._owned else None

    async def start(self) -> None:
        for topic in self.topics:
            await self.t.create_topic(topic)
        await self._heartbeat()
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        interval = self.t.lease_ms / 3000
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
                        # A rebalance is waiting for handlers to finish: keep every lease
                        # (the ones being drained too) alive meanwhile, or they would
                        # expire and another member would start on the same events.
                        await self.t._write(self._renew_tx, durable=False)
                except Exception:  # a busy database must not end membership for good
                    log.exception("heartbeat of %s in group %s failed", self.member, self.group)
        finally:
            if beat is not None and not beat.done():
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await beat

    def _renew_tx(self, conn: sqlite3.Connection) -> None:
        expires = _now_ms() + self.t.lease_ms
        args = (expires, self.group, self.member)
        conn.execute("UPDATE members SET expires_ms=? WHERE grp=? AND member=?", args)
        conn.execute("UPDATE leases SET expires_ms=? WHERE grp=? AND member=?", args)

    async def _heartbeat(self) -> None:
        async with self._rebalance_lock:
            if self._closed:
                return
            ids = {t: self.t._topic_ids[t] for t in self.topics}
            kept, claimed, excess = await self.t._write(
                lambda c: self._heartbeat_tx(c, ids), durable=False
            )
            names = {tid: name for name, (tid, _) in ids.items()}
            # Lost: owned here, but the lease was gone (expired, or removed by an offset
            # reset) even if this very heartbeat claimed it again.
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
            gained = frozenset((names[tid], p) for tid, p in claimed)
            if gained:
                await self._load_positions(gained)
                self._owned = self._owned | gained
            if excess:
                give = frozenset((names[tid], p) for tid, p in excess)
                self._owned = self._owned - give  # fetch stops here; commits still count
                await self._revoked(give)
                await self.t._write(lambda c: self._release_tx(c, excess), durable=False)
                self.t._notify()  # another member of this process may take them now

    async def _revoked(self, partitions: frozenset[TopicPartition]) -> None:
        if self.on_revoke is not None:
            await self.on_revoke(partitions)
        for tp in partitions:
            self._position.pop(tp, None)

    def _heartbeat_tx(
        self, conn: sqlite3.Connection, ids: dict[str, tuple[int, int]]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
        """Renew, clean up, claim up to the fair share; return (kept, claimed, excess)."""
        now = _now_ms()
        expires = now + self.t.lease_ms
        g, me = self.group, self.member
        conn.execute(
            "INSERT INTO members(grp, member, host, pid, expires_ms) VALUES (?,?,?,?,?)"
            " ON CONFLICT(grp, member) DO UPDATE SET expires_ms=excluded.expires_ms",
            (g, me, socket.gethostname(), os.getpid(), expires),
        )
        conn.execute("DELETE FROM members WHERE grp=? AND expires_ms < ?", (g, now))
        conn.execute("DELETE FROM leases WHERE grp=? AND expires_ms < ?", (g, now))
        conn.execute("UPDATE leases SET expires_ms=? WHERE grp=? AND member=?", (expires, g, me))
        leased = dict(
            ((tid, p), m)
            for tid, p, m in conn.execute(
                "SELECT topic_id, partition, member FROM leases WHERE grp=?", (g,)
            )
        )
        live = conn.execute("SELECT count(*) FROM members WHERE grp=?", (g,)).fetchone()[0]
        kept: list[tuple[int, int]] = []
        claimed: list[tuple[int, int]] = []
        excess: list[tuple[int, int]] = []
        column = "start_offset" if self.start_from == "earliest" else "next_offset"
        # A fair share of each topic (as Kafka's range assignor does), not of all the
        # partitions together: a group also reads its small retry topic, and a member
        # holding only that one would have nothing to do.
        for tid, count in ids.values():
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
                    conn.execute(
                        "INSERT INTO leases(grp, topic_id, partition, member, expires_ms)"
                        " VALUES (?,?,?,?,?)",
                        (g, *tp, me, expires),
                    )
                    conn.execute(
                        "INSERT OR IGNORE INTO group_offsets(grp, topic_id, partition, offset,"
                        f" updated_ms) SELECT ?, ?, ?, {column}, ? FROM partitions"
                        " WHERE topic_id=? AND partition=?",
                        (g, *tp, now, *tp),
                    )
                    held.append(tp)
                    claimed.append(tp)
            excess.extend(held[target:])
        return kept, claimed, excess

    def _release_tx(self, conn: sqlite3.Connection, parts: list[tuple[int, int]]) -> None:
        conn.executemany(
            "DELETE FROM leases WHERE grp=? AND topic_id=? AND partition=? AND member=?",
            [(self.group, tid, p, self.member) for tid, p in parts],
        )

    async def _load_positions(self, parts: frozenset[TopicPartition]) -> None:
        wanted = [(self.t._topic_ids[t][0], t, p) for t, p in parts]

        def job(conn: sqlite3.Connection) -> dict[TopicPartition, int]:
            out = {}
            for tid, topic, p in wanted:
                row = conn.execute(
                    "SELECT offset FROM group_offsets WHERE grp=? AND topic_id=? AND partition=?",
                    (self.group, tid, p),
                ).fetchone()
                out[(topic, p)] = int(row[0]) if row else 0
            return out

        self._position.update(await self.t._read(job))

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        self.t._ensure_watcher()
        while True:
            wake = self.t._wake
            try:
                records = self._fetch_once(max_records)
            except sqlite3.Error as exc:
                raise translate_error(exc) from exc
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self.t.wait_for_appends(remaining)
            if not wake.is_set() and time.monotonic() >= deadline:
                return []

    def _fetch_once(self, max_records: int) -> list[Record]:
        owned = sorted(self._owned)
        if not owned:
            return []
        self._rr = (self._rr + 1) % len(owned)
        owned = owned[self._rr :] + owned[: self._rr]
        positions = [(tp, self._position[tp]) for tp in owned if tp in self._position]
        per = max(1, max_records // len(positions)) if positions else 0
        ids = self.t._topic_ids

        conn = self.t._connect_inline()
        out: list[Record] = []
        room = max_records
        # On the loop's thread, with no await: no rebalance can run in between.
        for (topic, p), pos in positions:
            limit = min(per, room)
            if limit <= 0:
                break
            rows = conn.execute(
                "SELECT offset, ts, key, value FROM events WHERE topic_id=?"
                " AND partition=? AND offset >= ? ORDER BY offset LIMIT ?",
                (ids[topic][0], p, pos, limit),
            ).fetchall()
            if rows:
                out += [Record(topic, p, o, ts, k, v) for o, ts, k, v in rows]
                self._position[(topic, p)] = rows[-1][0] + 1
                room -= len(rows)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Position]) -> None:
        if not offsets:
            return
        ids = self.t._topic_ids
        rows = [
            (self.group, ids[t][0], p, off, _now_ms(), self.group, ids[t][0], p, self.member)
            for (t, p), (off, _generation) in offsets.items()
        ]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO group_offsets(grp, topic_id, partition, offset, updated_ms)"
                " SELECT ?,?,?,?,? WHERE EXISTS (SELECT 1 FROM leases WHERE grp=?"
                " AND topic_id=? AND partition=? AND member=?)"
                " ON CONFLICT(grp, topic_id, partition) DO UPDATE"
                " SET offset=excluded.offset, updated_ms=excluded.updated_ms",
                rows,
            )

        await self.t._write(job, durable=False)

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
            await self.t._write(job, durable=False)
        self.t._notify()
