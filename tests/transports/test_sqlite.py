"""What the SQLite log does beyond the conformance suite: URLs, durability settings,
group commit, retention, lease expiry and cross-process wake-ups."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidings.errors import ConfigError, TransportError
from tidings.partitioning import partition_for
from tidings.testing import drain, eventually
from tidings.transports import open_transport
from tidings.transports.sqlite import SQLiteTransport, wakeup


@pytest.fixture
async def log(sqlite_url: str) -> AsyncIterator[SQLiteTransport]:
    t = SQLiteTransport(sqlite_url + "?lease=1")
    await t.start()
    yield t
    await t.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/x.db", "sqlite:///relative/path.db"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?partitons=3", "unknown option(s) partitons"),
        ("sqlite:///x.db?synchronous=SOMETIMES", "use FULL"),
        ("sqlite:///x.db?lease=soon", "is not a number"),
        ("sqlite:///x.db?partitions=0", "must be > 0"),
        ("postgres://x", "scheme must be one of"),
    ],
)
def test_bad_urls_are_refused_with_a_hint(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_transport(url)
    assert message in str(info.value)


async def test_a_missing_folder_is_reported_not_created(tmp_path: Path) -> None:
    t = SQLiteTransport(f"sqlite:///{tmp_path}/nowhere/events.db")
    with pytest.raises(ConfigError, match="does not exist"):
        await t.start()
    assert not (tmp_path / "nowhere").exists()


async def test_wal_and_full_synchronous_are_the_default(
    log: SQLiteTransport, db_path: Path
) -> None:
    synchronous = await log._client.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert synchronous == 2  # FULL: an acknowledged append survives a power loss
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_normal_synchronous_can_be_chosen(db_path: Path) -> None:
    t = SQLiteTransport(f"sqlite:///{db_path}?synchronous=normal")
    await t.start()
    try:
        assert await t._client.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    finally:
        await t.close()


async def test_concurrent_publishes_share_transactions(
    log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.create_topic("t", 4)
    log.retention_interval = float("inf")  # count appends only
    batches: list[int] = []
    assert log._client._writer is not None
    original = log._client._writer._run_jobs

    def counting(jobs, durable):  # type: ignore[no-untyped-def]
        batches.append(len(jobs))
        return original(jobs, durable)

    monkeypatch.setattr(log._client._writer, "_run_jobs", counting)
    await asyncio.gather(*(log.append("t", [(f"k{i}", b"v")]) for i in range(200)))
    assert sum(batches) == 200
    assert len(batches) < 50, f"200 appends took {len(batches)} transactions"


async def test_a_failing_write_does_not_fail_its_neighbours(log: SQLiteTransport) -> None:
    await log.create_topic("t", 1)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results = await asyncio.gather(
        log.append("t", [("k", b"a")]),
        log._client.write(broken),
        log.append("t", [("k", b"b")]),
        return_exceptions=True,
    )
    assert isinstance(results[1], TransportError)
    assert results[0] == [(0, 0)]
    assert results[2] == [(0, 1)]
    assert [r.value for r in await log.read("t", 0, 0, 10)] == [b"a", b"b"]


async def test_retention_by_age_drops_old_records_and_moves_the_start(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("old", 1, retention_ms=100)
    await log.append("old", [("k", b"x" * 10) for _ in range(5)])
    await asyncio.sleep(0.2)
    await log.append("old", [("k", b"y" * 10)])
    assert await log.enforce_retention() == 5
    [info] = [t for t in await log.topics() if t.name == "old"]
    assert (info.partitions[0].start, info.partitions[0].end) == (5, 6)
    assert info.size == 10
    assert [r.value for r in await log.read("old", 0, 0, 10)] == [b"y" * 10]


async def test_retention_by_size_keeps_the_newest_bytes(log: SQLiteTransport) -> None:
    await log.create_topic("big", 1, retention_bytes=100)
    await log.append("big", [("k", f"{i:010d}".encode()) for i in range(30)])
    await log.enforce_retention()
    [info] = [t for t in await log.topics() if t.name == "big"]
    assert info.size == 100
    assert info.partitions[0].start == 20
    records = await log.read("big", 0, 0, 100)
    assert [r.offset for r in records] == list(range(20, 30))


async def test_a_fetch_shares_its_records_among_the_partitions_that_have_any(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 4)
    await log.create_topic("t.retry", 8)  # owned too, and empty, as a group's retry topic
    c = log.consumer("g", ["t", "t.retry"])
    await c.start()
    try:
        await eventually(lambda: len(c.assignment()) == 12)
        assert partition_for("a", 4) != partition_for("c", 4)
        await log.append("t", [("a", b"x")] * 100)
        await log.append("t", [("c", b"y")] * 3)
        records = await c.fetch(60, timeout=5)
        # Not 60 // 12 each: the empty partitions take no share, and the partition
        # with 3 records leaves the rest of its share to the other.
        counts = {value: sum(r.value == value for r in records) for value in (b"x", b"y")}
        assert counts == {b"x": 57, b"y": 3}
        assert [r.offset for r in records if r.value == b"x"] == list(range(57))
        rest = await drain(c, 43)
        assert [r.offset for r in rest] == list(range(57, 100))
    finally:
        await c.close()


async def test_a_group_behind_retention_continues_from_the_new_start(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 1, retention_bytes=50)
    c = log.consumer("g", ["t"])
    await c.start()
    try:
        await log.append("t", [("k", f"{i:010d}".encode()) for i in range(20)])
        await log.enforce_retention()
        records = await drain(c, 5)
        assert [r.offset for r in records] == [15, 16, 17, 18, 19]
    finally:
        await c.close()


async def test_a_silent_members_partitions_move_after_its_lease_expires(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 4)
    a = log.consumer("g", ["t"])
    b = log.consumer("g", ["t"])
    await a.start()
    await b.start()
    try:
        await eventually(lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2)
        # a stops heartbeating, as a SIGKILLed or frozen process would.
        assert a._heartbeat_task is not None
        a._heartbeat_task.cancel()
        started = time.monotonic()
        await eventually(lambda: len(b.assignment()) == 4, timeout=5)
        assert time.monotonic() - started < 1.0 + 1.0  # lease (1 s) + one heartbeat
    finally:
        await b.close()
        await a.close()


_APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from tidings.transports.sqlite import SQLiteTransport

    async def main():
        t = SQLiteTransport(sys.argv[1])
        await t.start()
        await t.append("t", [("k", b"from-another-process")])
        await t.close()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "stat-polling"])
async def test_a_reader_wakes_promptly_on_another_processes_append(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, polling: bool
) -> None:
    if polling:
        monkeypatch.setattr(wakeup, "_libc", lambda: None)
    t = SQLiteTransport(sqlite_url)
    await t.start()
    c = t.consumer("g", ["t"])
    try:
        await t.create_topic("t", 1)
        await c.start()
        assert await c.fetch(1, timeout=0.05) == []
        assert t._client.appended.watcher is not None
        assert t._client.appended.watcher.polling is polling
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _APPENDER, sqlite_url)
        fetch = asyncio.create_task(c.fetch(1, timeout=20))
        await proc.wait()  # its append is what the assertions below look for
        done_at = time.monotonic()
        records = await fetch
        woke_after = time.monotonic() - done_at
        assert [r.value for r in records] == [b"from-another-process"]
        assert woke_after < 0.25, f"woke {woke_after * 1000:.0f} ms after the append"
    finally:
        await c.close()
        await t.close()


async def test_a_damaged_file_is_reported_as_a_transport_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database" * 100)
    t = SQLiteTransport(f"sqlite:///{db_path}")
    with pytest.raises(TransportError, match="SQLite"):
        await t.start()
    await t.close()


def test_the_log_is_readable_with_plain_sqlite(db_path: Path) -> None:
    """The file is plain SQLite: ops people can inspect it without tidings."""
    code = textwrap.dedent(
        f"""
        import asyncio
        from tidings.transports.sqlite import SQLiteTransport
        async def main():
            t = SQLiteTransport("sqlite:///{db_path}")
            await t.start()
            await t.append("t", [("k", b"hello")])
            await t.close()
        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT value FROM events").fetchall() == [(b"hello",)]


async def test_bookkeeping_commits_without_fsync_and_appends_with_it(
    log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.create_topic("t", 1)
    log.retention_interval = float("inf")
    seen: list[bool] = []
    assert log._client._writer is not None
    original = log._client._writer._run_jobs

    def recording(jobs, durable):  # type: ignore[no-untyped-def]
        seen.append(durable)
        return original(jobs, durable)

    monkeypatch.setattr(log._client._writer, "_run_jobs", recording)
    c = log.consumer("g", ["t"])
    await c.start()
    try:
        assert seen[-1] is False  # the joining heartbeat is bookkeeping
        seen.clear()
        await log.append("t", [("k", b"x")])
        await c.commit(c.at({("t", 0): 1}))
        assert seen == [True, False]
        await asyncio.gather(log.append("t", [("k", b"y")]), c.commit(c.at({("t", 0): 2})))
        assert seen[-1] is True  # one durable job makes the whole transaction durable
    finally:
        await c.close()


async def test_an_append_waits_for_another_processes_write_lock(db_path: Path) -> None:
    t = SQLiteTransport(f"sqlite:///{db_path}?busy_timeout=5")
    await t.start()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        await t.create_topic("t", 1)
        other.execute("BEGIN IMMEDIATE")
        append = asyncio.create_task(t.append("t", [("k", b"x")]))
        await asyncio.sleep(0.1)
        assert not append.done()
        other.execute("COMMIT")
        started = time.monotonic()
        assert await append == [(0, 0)]
        assert time.monotonic() - started < 0.5  # taken soon after the release
    finally:
        other.close()
        await t.close()


async def test_a_fresh_log_opens_while_another_process_writes_to_it(db_path: Path) -> None:
    # Before it is in WAL mode, SQLite answers the switch to WAL with "database is
    # locked" at once, without waiting busy_timeout, while another connection writes:
    # as when the Task API's services open one fresh log together (seen once in CI).
    other = sqlite3.connect(db_path, isolation_level=None)
    t = SQLiteTransport(f"sqlite:///{db_path}?busy_timeout=5")
    try:
        other.execute("BEGIN IMMEDIATE")
        start = asyncio.create_task(t.start())
        await asyncio.sleep(0.2)
        assert not start.done()
        other.execute("COMMIT")
        await start
        assert sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert await t.append("t", [("k", b"x")]) == [(0, 0)]
    finally:
        other.close()
        await t.close()


@pytest.mark.parametrize("when", ["start", "append"])
async def test_a_write_lock_held_past_busy_timeout_is_a_clear_error(
    db_path: Path, when: str
) -> None:
    # At start, on a fresh log: the switch to WAL (see above); at an append: BEGIN.
    t = SQLiteTransport(f"sqlite:///{db_path}?busy_timeout=0.2")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        if when == "append":
            await t.start()
            await t.create_topic("t", 1)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(
            TransportError, match="locked by another process for longer than busy_timeout"
        ):
            await (t.start() if when == "start" else t.append("t", [("k", b"x")]))
        other.execute("ROLLBACK")
        await t.start()  # again, if it failed: nothing was left half-done
        assert await t.append("t", [("k", b"x")]) == [(0, 0)]
    finally:
        other.close()
        await t.close()


async def test_a_failed_append_gives_its_offsets_back_within_a_group_commit(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 1)
    unbindable = {"not": "bytes"}  # sqlite3 cannot store it: the append fails in the writer
    results = await asyncio.gather(
        log.append("t", [("k", b"a")]),
        log.append("t", [("k", unbindable)]),  # type: ignore[list-item]
        log.append("t", [("k", b"b")]),
        return_exceptions=True,
    )
    assert results[0] == [(0, 0)]
    assert isinstance(results[1], TransportError)
    assert results[2] == [(0, 1)]  # no hole where the failed append was
    [info] = await log.topics()
    assert (info.partitions[0].end, info.size) == (2, 2)
    assert await log.append("t", [("k", b"c")]) == [(0, 2)]


async def test_other_writes_in_a_group_commit_see_the_appends_before_them(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 1)

    def end_offset(conn: sqlite3.Connection) -> int:
        return int(
            conn.execute("SELECT next_offset FROM partitions WHERE partition=0").fetchone()[0]
        )

    results = await asyncio.gather(
        log.append("t", [("k", b"a"), ("k", b"b")]), log._client.write(end_offset)
    )
    assert results[1] == 2
