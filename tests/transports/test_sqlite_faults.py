"""The SQLite log's promises under faults (issue 15): reads that fail half-way, stale
commits, retention racing a lagging group, leases that cannot be renewed or released,
wall-clock steps, and records that are empty."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tidings.errors import TransportError
from tidings.testing import SteppedClock, drain, eventually
from tidings.transport import FOREVER, TopicPartition
from tidings.transports.sqlite import SQLiteConsumer, SQLiteTransport
from tidings.transports.sqlite import client as sqlite_client
from tidings.transports.sqlite import sql as sqlite_sql
from tidings.transports.sqlite import transport as sqlite_transport


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SQLiteTransport]:
    t = SQLiteTransport(f"sqlite:///{tmp_path}/events.db?partitions=4")
    t.retention_interval = float("inf")  # retention runs when a test calls it
    await t.start()
    yield t
    await t.close()


async def member(t: SQLiteTransport, group: str = "g", **kw: Any) -> SQLiteConsumer:
    c = t.consumer(group, ["t"], **kw)
    assert isinstance(c, SQLiteConsumer)
    await c.start()
    return c


async def committed(t: SQLiteTransport, group: str = "g") -> dict[TopicPartition, int | None]:
    return {
        (p.topic, p.partition): p.committed
        for g in await t.groups()
        if g.group == group
        for p in g.partitions
    }


class FailingReads:
    """A connection whose ``fail_at``-th SELECT fails once, as a locked file would."""

    def __init__(self, conn: sqlite3.Connection, fail_at: int) -> None:
        self.conn = conn
        self.selects = 0
        self.fail_at = fail_at

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("SELECT"):
            self.selects += 1
            if self.selects == self.fail_at:
                raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql, *args)


async def test_a_read_that_fails_half_way_through_a_fetch_skips_nothing(
    log: SQLiteTransport,
) -> None:
    # Finding 1: the first partitions' positions moved before the second read failed,
    # and the next fetch started after records that were never handed out.
    await log.create_topic("t", 4)
    await log.append("t", [(f"k{i}", f"v{i}".encode()) for i in range(100)])
    c = await member(log)
    try:
        real = log._client._connect_inline
        failing = FailingReads(real(), fail_at=2)
        log._client._connect_inline = lambda: failing  # type: ignore[assignment,method-assign,return-value]
        with pytest.raises(TransportError, match="locked"):
            await c.fetch(100, timeout=1.0)
        got = await drain(c, 100)
        assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(100))
    finally:
        await c.close()


async def test_retention_reports_what_a_lagging_group_never_read(
    log: SQLiteTransport, caplog: pytest.LogCaptureFixture
) -> None:
    # Finding 3: 241 unread records went without a word; the lag simply dropped.
    await log.create_topic("t", 1, retention_bytes=100)
    await log.append("t", [("k", b"0123456789") for _ in range(30)])
    c = await member(log)
    await c.commit(c.at({("t", 0): 5}))
    await c.close()
    with caplog.at_level(logging.WARNING, logger="tidings.sqlite"):
        assert await log.enforce_retention() == 20
    [row] = [p for g in await log.groups() if g.group == "g" for p in g.partitions]
    assert (row.committed, row.start, row.lost) == (5, 20, 15)
    [warning] = [r.getMessage() for r in caplog.records if "had not read" in r.getMessage()]
    assert "15 record(s) of t[0] that group g had not read (offsets 5..19)" in warning


async def test_a_keep_unread_topic_never_deletes_what_a_live_group_has_not_committed(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 1, retention_bytes=100, keep_unread=True)
    await log.append("t", [("k", b"0123456789") for _ in range(30)])
    c = await member(log)
    try:
        await c.commit(c.at({("t", 0): 5}))
        assert await log.enforce_retention() == 5  # not past the live group's offset
        [row] = [p for g in await log.groups() if g.group == "g" for p in g.partitions]
        assert (row.start, row.lost) == (5, 0)
    finally:
        await c.close()


async def test_keep_unread_is_checked_again_in_each_delete_transaction(
    log: SQLiteTransport,
) -> None:
    # The plan is read once; a group reset backwards (or joining) before a batch is
    # deleted must still keep what it has not read.
    await log.create_topic("t", 1, retention_bytes=100, keep_unread=True)
    await log.append("t", [("k", b"0123456789") for _ in range(30)])
    c = await member(log)
    try:
        await c.commit(c.at({("t", 0): 5}))
        tid = log._client.topic_ids["t"][0]
        job = functools.partial(sqlite_sql.delete_below, tid=tid, p=0, cut=20, keep_for={"g"})
        assert await log._client.write(job) == (5, True, [])  # cut back to the group's offset
    finally:
        await c.close()


async def test_dead_letter_topics_can_be_kept_forever(log: SQLiteTransport) -> None:
    info = await log.create_topic("g.dlq", 1, retention_ms=FOREVER, retention_bytes=FOREVER)
    assert (info.retention_ms, info.retention_bytes) == (None, None)


async def test_retention_deletes_in_short_transactions_and_the_wal_shrinks_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding 5: one transaction for every record held the write lock for seconds and
    # left the WAL at its largest for good.
    monkeypatch.setattr(sqlite_client, "WAL_SIZE_LIMIT", 256 * 1024)
    t = SQLiteTransport(f"sqlite:///{tmp_path}/events.db?partitions=1")
    await t.start()
    try:
        t.retention_interval = float("inf")
        await t.create_topic("t", 1, retention_ms=1)
        for _ in range(5):
            await t.append("t", [("k", b"x" * 500) for _ in range(1000)])
        deletes: list[int] = []
        real = sqlite_sql.delete_below

        def counting(*args: Any, **kw: Any) -> Any:
            result = real(*args, **kw)
            deletes.append(result[0])
            return result

        monkeypatch.setattr(sqlite_transport, "delete_below", counting)
        await asyncio.sleep(0.01)  # every record is older than 1 ms
        assert await t.enforce_retention() == 5000
        assert deletes == [sqlite_sql.RETENTION_BATCH] * 5  # one transaction each
        await t.append("t", [("k", b"y")])  # the next writer restarts the WAL, cut back
        wal = Path(f"{tmp_path}/events.db-wal")
        assert wal.stat().st_size <= 256 * 1024
    finally:
        await t.close()


async def test_an_excess_partition_whose_release_failed_is_handed_back_next_beat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding 4: the release failed, the partition stayed leased to a member that no
    # longer read it, and was renewed forever: 0 of its records were handled.
    t = SQLiteTransport(f"sqlite:///{tmp_path}/events.db?partitions=4&lease=1")
    await t.start()
    a = b = None
    try:
        await t.create_topic("t", 4)
        await t.append("t", [(f"k{i}", f"v{i}".encode()) for i in range(40)])
        a = await member(t)
        assert len(a.assignment()) == 4
        real = SQLiteConsumer._release_tx
        failures = []

        def failing_once(self: SQLiteConsumer, conn: Any, parts: Any) -> None:
            if not failures:
                failures.append(parts)
                raise sqlite3.OperationalError("disk I/O error")
            real(self, conn, parts)

        monkeypatch.setattr(SQLiteConsumer, "_release_tx", failing_once)
        b = await member(t)
        await eventually(
            lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2,
            timeout=20,
            what="the released partitions reaching the second member",
        )
        assert failures, "the release never failed: the test did not test anything"
        [info] = [i for i in await t.topics() if i.name == "t"]
        theirs = sum(p.events for p in info.partitions if ("t", p.partition) in b.assignment())
        assert len(await drain(b, theirs, timeout=10)) == theirs
    finally:
        for c in (a, b):
            if c is not None:
                await c.close()
        await t.close()


async def test_a_claim_whose_start_failed_is_released_and_read_after_all(
    log: SQLiteTransport,
) -> None:
    # Finding 4: when starting on a claimed partition failed, the partition stayed
    # leased to the member, renewed at every beat, and never read (0 of 50 handled).
    await log.create_topic("t", 1)
    await log.append("t", [("k", f"v{i}".encode()) for i in range(50)])
    failures: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        if not failures:
            failures.append(tps)
            raise TransportError("the worker could not finish its lanes")

    c = await member(log, on_revoke=on_revoke)
    try:
        await drain(c, 50)
        # The reset takes the lease; the next beat loses and claims it in one go, and
        # the revocation of the old lease fails before the new claim is started.
        await log.set_offsets("g", "t", {0: 0}, force=True)
        with pytest.raises(TransportError, match="could not finish"):
            await c._heartbeat()
        assert failures
        await c._heartbeat()
        assert c.assignment() == {("t", 0)}
        assert len(await drain(c, 50)) == 50
    finally:
        await c.close()


async def test_a_member_whose_renewals_fail_gives_its_partitions_up(
    tmp_path: Path,
) -> None:
    # Finding 8: a member that could not renew only logged, and went on handing out
    # and committing records another member could already have taken.
    t = SQLiteTransport(f"sqlite:///{tmp_path}/events.db?partitions=2&lease=1")
    clock = SteppedClock()
    t.clock = clock
    await t.start()
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)

    c = None
    try:
        await t.create_topic("t", 2)
        await t.append("t", [(f"k{i}", b"v") for i in range(10)])
        c = await member(t, on_revoke=on_revoke)
        assert len(c.assignment()) == 2

        async def broken(point: str) -> None:
            raise TransportError(f"injected failure at {point}")

        t.fault_hook = broken
        clock.advance(0.8)  # more than 0.75 of the 1 s lease since the last renewal
        assert await c.fetch(10, timeout=0.1) == []  # hands out nothing more
        await eventually(lambda: bool(revoked), timeout=10, what="the partitions given up")
        assert revoked == [frozenset({("t", 0), ("t", 1)})]
        assert c.assignment() == frozenset()
        t.fault_hook = None  # renewals work again: the member claims them back
        await eventually(lambda: len(c.assignment()) == 2, timeout=10, what="a new claim")
        assert len(await drain(c, 10)) == 10
    finally:
        if c is not None:
            await c.close()
        await t.close()


async def test_a_member_claims_again_only_once_the_worker_let_go_of_what_it_fenced(
    tmp_path: Path,
) -> None:
    # The worker may still be finishing a handler of a partition the member fenced;
    # records of a new claim must not reach its lanes before it has dropped them (they
    # would be dropped with them while the member's position moved past: lost).
    t = SQLiteTransport(f"sqlite:///{tmp_path}/events.db?partitions=1&lease=1")
    clock = SteppedClock()
    t.clock = clock
    await t.start()
    finishing = asyncio.Event()
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)
        await finishing.wait()  # a handler still running

    c = None
    try:
        await t.create_topic("t", 1)
        c = await member(t, on_revoke=on_revoke)
        assert c._heartbeat_task is not None
        c._heartbeat_task.cancel()  # beats are driven by hand below
        clock.advance(0.8)
        c._fence_self()
        assert c.assignment() == frozenset()
        await eventually(lambda: bool(revoked), what="the worker asked to let go")
        beat = asyncio.create_task(c._heartbeat())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(beat), 0.5)
        assert c.assignment() == frozenset(), "claimed again while the worker let go"
        finishing.set()
        await beat
        assert c.assignment() == {("t", 0)}
    finally:
        finishing.set()
        if c is not None:
            await c.close()
        await t.close()


async def test_a_wall_clock_step_forward_moves_no_partition(
    log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding 9: +60 s on the wall clock expired every lease: both members lost every
    # partition and 91 events were handled twice.
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)

    await log.create_topic("t", 4)
    a = await member(log, on_revoke=on_revoke)
    b = await member(log, on_revoke=on_revoke)
    try:
        await a._heartbeat()  # gives two up
        await b._heartbeat()  # takes them
        assert (len(a.assignment()), len(b.assignment())) == (2, 2)
        revoked.clear()
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() + 60_000_000_000)
        for _ in range(3):
            await a._heartbeat()
            await b._heartbeat()
        assert revoked == []
        assert (len(a.assignment()), len(b.assignment())) == (2, 2)
    finally:
        await a.close()
        await b.close()


async def test_a_wall_clock_step_back_does_not_keep_a_dead_members_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding 9: -60 s kept a dead member's leases alive for another minute.
    t = SQLiteTransport(f"sqlite:///{tmp_path}/events.db?partitions=2&lease=1")
    clock = SteppedClock()
    t.clock = clock
    await t.start()
    try:
        await t.create_topic("t", 2)
        dead = await member(t)
        assert dead._heartbeat_task is not None
        dead._heartbeat_task.cancel()  # as if SIGKILLed: its rows stay
        with contextlib.suppress(asyncio.CancelledError):
            await dead._heartbeat_task
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() - 60_000_000_000)
        alive = await member(t)
        assert alive.assignment() == frozenset()
        clock.advance(1.0)  # a lease length of this process's time, its beat unchanged
        await alive._heartbeat()
        assert len(alive.assignment()) == 2
        await alive.close()
    finally:
        await t.close()


async def test_an_empty_record_does_not_wedge_its_partition(log: SQLiteTransport) -> None:
    # Finding 11: the empty value added no bytes, so its partition's next offset was
    # never stored and every later append failed on a UNIQUE constraint.
    await log.create_topic("t", 1)
    assert await log.append("t", [("k", b"")]) == [(0, 0)]
    assert await log.append("t", [("k", b"x")]) == [(0, 1)]
    assert [r.value for r in await log.read("t", 0, 0, 10)] == [b"", b"x"]


def test_an_older_log_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_schema = sqlite_sql.SCHEMA.replace(",\n    keep_unread INTEGER NOT NULL DEFAULT 0", "")
    for column in ("generation", "lost", "beat"):
        old_schema = old_schema.replace(f",\n    {column} INTEGER NOT NULL DEFAULT 0", "")
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    assert "generation" not in {r[1] for r in conn.execute("PRAGMA table_info(leases)")}
    sqlite_sql.create_schema(conn)
    assert "generation" in {r[1] for r in conn.execute("PRAGMA table_info(leases)")}
    assert "keep_unread" in {r[1] for r in conn.execute("PRAGMA table_info(topics)")}
    conn.close()
    assert os.path.exists(path)
