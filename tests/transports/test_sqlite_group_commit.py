"""The SQLite log's group commit: appends that arrive together share one transaction
(and one fsync), and each publisher still gets its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tidings.errors import TopicNotFound, TransportError
from tidings.partitioning import partition_for
from tidings.testing import eventually
from tidings.transports.sqlite import SQLiteTransport
from tidings.transports.sqlite.writer import GroupCommitWriter


@pytest.fixture
async def log(sqlite_url: str) -> AsyncIterator[SQLiteTransport]:
    t = SQLiteTransport(sqlite_url)
    await t.start()
    t.retention_interval = float("inf")  # no background write in between
    yield t
    await t.close()


def _writer(log: SQLiteTransport) -> GroupCommitWriter:
    writer = log._client._writer
    assert writer is not None
    return writer


def _count_transactions(log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of jobs of each transaction the writer runs from now on."""
    batches: list[int] = []
    writer = _writer(log)
    original = writer._run_jobs

    def counting(jobs: Any, durable: bool) -> Any:
        batches.append(len(jobs))
        return original(jobs, durable)

    monkeypatch.setattr(writer, "_run_jobs", counting)
    return batches


async def _hold_writer(log: SQLiteTransport) -> tuple[asyncio.Task[Any], threading.Event]:
    """A write that keeps the writer thread busy until the returned event is set (what
    is handed in meanwhile waits for the next transaction)."""
    started, release = threading.Event(), threading.Event()

    def job(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(30)

    task = asyncio.create_task(log._client.write(job))
    await eventually(started.is_set)
    return task, release


async def _values(log: SQLiteTransport, topic: str, partition: int) -> list[bytes]:
    return [r.value for r in await log.read(topic, partition, 0, 1000)]


async def test_appends_of_one_group_commit_share_a_transaction_in_order_per_key(
    log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.create_topic("t", 4)
    batches = _count_transactions(log, monkeypatch)
    keys = [f"k{i}" for i in range(20)]

    async def publisher(key: str) -> list[tuple[int, int]]:
        out = []
        for seq in range(10):
            out += await log.append("t", [(key, f"{key}:{seq}".encode())])
        return out

    results = await asyncio.gather(*(publisher(k) for k in keys))
    assert sum(batches) == 200
    assert len(batches) <= 20  # about one transaction per round of the 20 publishers
    for key, places in zip(keys, results, strict=True):
        p = partition_for(key, 4)
        assert {q for q, _ in places} == {p}
        offsets = [o for _, o in places]
        assert offsets == sorted(offsets)
        values = [v for v in await _values(log, "t", p) if v.startswith(f"{key}:".encode())]
        assert values == [f"{key}:{seq}".encode() for seq in range(10)]


async def test_an_append_to_a_deleted_topic_fails_alone_in_its_group_commit(
    log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.create_topic("t", 1)
    await log.create_topic("gone", 1)
    gone = log._client.topic_ids["gone"]
    await log.delete_topic("gone")
    batches = _count_transactions(log, monkeypatch)
    results = await asyncio.gather(
        log.append("t", [("k", b"a")]),
        log._client.append(gone, [("k", b"x")]),  # its id, as cached before the delete
        log.append("t", [("k", b"b"), ("k", b"c")]),
        return_exceptions=True,
    )
    assert batches == [3]  # one transaction: the others were tried again one by one
    assert results[0] == [(0, 0)]
    assert isinstance(results[1], TopicNotFound)
    assert results[2] == [(0, 1), (0, 2)]
    assert await _values(log, "t", 0) == [b"a", b"b", b"c"]


async def test_a_failed_commit_fails_each_publisher_of_its_batch_and_loses_nothing_acknowledged(
    log: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.create_topic("t", 1)
    assert await log.append("t", [("k", b"before")]) == [(0, 0)]
    writer = _writer(log)
    original: Callable[[sqlite3.Connection], None] = writer._store_heads
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_once(conn: sqlite3.Connection) -> None:
        if failures and writer._heads:  # once, just before the COMMIT of the appends
            raise failures.pop()
        original(conn)

    monkeypatch.setattr(writer, "_store_heads", failing_once)
    held, release = await _hold_writer(log)
    batch = [asyncio.create_task(log.append("t", [("k", v)])) for v in (b"x", b"y", b"z")]
    await asyncio.sleep(0)  # handed in while the writer is busy: one transaction
    release.set()
    await held
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(r, TransportError) and "disk I/O error" in str(r) for r in results)
    assert await _values(log, "t", 0) == [b"before"]
    # The offsets of the failed batch are not taken: the next append follows on.
    assert await log.append("t", [("k", b"after")]) == [(0, 1)]
    assert await _values(log, "t", 0) == [b"before", b"after"]


async def test_a_publisher_cancelled_while_waiting_for_its_transaction_writes_nothing(
    log: SQLiteTransport,
) -> None:
    await log.create_topic("t", 1)
    held, release = await _hold_writer(log)
    first = asyncio.create_task(log.append("t", [("k", b"a")]))
    cancelled = asyncio.create_task(log.append("t", [("k", b"cancelled")]))
    last = asyncio.create_task(log.append("t", [("k", b"b")]))
    await asyncio.sleep(0)  # all three handed in, waiting behind the held write
    cancelled.cancel()
    release.set()
    await held
    assert await first == [(0, 0)]
    assert await last == [(0, 1)]  # no hole where the cancelled one was
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await _values(log, "t", 0) == [b"a", b"b"]
