"""Deleting a topic of the SQLite log, beyond the conformance suite: what another
process (here, another transport on the same file, with its own caches) sees, retention
that planned before the delete, and fencing across it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidings.errors import TopicNotFound
from tidings.testing import drain, eventually
from tidings.transport import positions
from tidings.transports.sqlite import SQLiteTransport
from tidings.transports.sqlite.sql import delete_below


@pytest.fixture
async def pair(sqlite_url: str) -> AsyncIterator[tuple[SQLiteTransport, SQLiteTransport]]:
    """Two transports on one file: ``a`` stands for another process, with its caches."""
    a, b = SQLiteTransport(sqlite_url + "?lease=1"), SQLiteTransport(sqlite_url + "?lease=1")
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def test_a_deleted_topics_id_is_never_given_again_and_a_stale_one_is_looked_up_again(
    pair: tuple[SQLiteTransport, SQLiteTransport], db_path: Path
) -> None:
    a, b = pair
    await a.append("t", [("k", b"old")])  # a caches t's id
    await b.delete_topic("t")
    await b.append("u", [("k", b"u")])  # the newest topic: it must not take t's old id
    await a.append("t", [("k", b"new")])  # a's cached id is stale: t is made again
    rows = {t.name: t.events for t in await b.topics()}
    assert rows == {"t": 1, "u": 1}
    with sqlite3.connect(db_path) as conn:
        ids = dict(conn.execute("SELECT name, id FROM topics").fetchall())
        (deleted,) = conn.execute("SELECT id FROM deleted_topics WHERE name='t'").fetchone()
    assert deleted not in ids.values()
    [(partition, _)] = await b.append("t", [("k", b"again")])
    assert [r.value for r in await b.read("t", partition, 0, 10)] == [b"new", b"again"]


async def test_a_deleted_topic_is_not_found_in_the_process_that_deleted_it(
    pair: tuple[SQLiteTransport, SQLiteTransport],
) -> None:
    a, b = pair
    await a.append("t", [("k", b"x")])
    await a.delete_topic("t")
    with pytest.raises(TopicNotFound):
        await a.read("t", 0, 0, 1)
    with pytest.raises(TopicNotFound):
        await b.delete_topic("t")


async def test_a_member_in_another_process_lets_a_deleted_topic_go_and_reads_it_anew(
    pair: tuple[SQLiteTransport, SQLiteTransport],
) -> None:
    a, b = pair
    await a.create_topic("t", 2)
    await a.append("t", [(f"k{i}", f"v{i}".encode()) for i in range(6)])
    member = a.consumer("g", ["t"])
    await member.start()
    try:
        before = await drain(member, 6)
        old, _ = a._client.topic_ids["t"]
        await b.delete_topic("t")  # forced, as it were: the member is live
        # Its heartbeat sees the topic gone, lets its partitions go and makes it again.
        await eventually(
            lambda: a._client.topic_ids.get("t", (old, 0))[0] != old, what="t made again"
        )
        assert not member.assignment() & {("t", r.partition) for r in before} or all(
            member.generation(("t", r.partition)) != r.generation for r in before
        )
        await b.append("t", [("k", b"new")])
        [record] = await drain(member, 1, timeout=30)
        assert record.value == b"new"
        # A commit of records fetched before the delete does not count on the new topic.
        committed = await _committed(b, "g")
        await member.commit(positions(before))
        assert await _committed(b, "g") == committed
        await member.commit(positions([record]))
        assert (await _committed(b, "g"))[("t", record.partition)] == record.offset + 1
    finally:
        await member.close()


async def _committed(t: SQLiteTransport, group: str) -> dict[tuple[str, int], int | None]:
    return {(p.topic, p.partition): p.committed for g in await t.groups() for p in g.partitions}


async def test_retention_planned_before_a_delete_skips_the_deleted_topic(
    pair: tuple[SQLiteTransport, SQLiteTransport],
) -> None:
    a, _ = pair
    await a.create_topic("t", 1, retention_bytes=1)
    await a.append("t", [("k", b"x" * 10) for _ in range(5)])
    tid, _ = await a._client.ids("t")
    await a.delete_topic("t")
    result = await a._client.write(lambda c: delete_below(c, tid=tid, p=0, cut=4))
    assert result == (0, True, [])
    assert await a.enforce_retention() == 0


async def test_reads_and_resets_on_a_stale_id_say_the_topic_is_gone_and_look_it_up_again(
    pair: tuple[SQLiteTransport, SQLiteTransport],
) -> None:
    a, b = pair
    await a.create_topic("t", 1)
    await a.append("t", [("k", b"old")])
    for attempt in (
        lambda: a.read("t", 0, 0, 10),
        lambda: a.offsets_for_time("t", 0),
        lambda: a.set_offsets("g", "t", {0: 0}),
    ):
        await a.read("t", 0, 0, 10)  # a caches t's id
        await b.delete_topic("t")
        with pytest.raises(TopicNotFound, match="'t' does not exist"):
            await attempt()
        assert "t" not in a._client.topic_ids  # forgotten
        await b.create_topic("t", 1)
        await b.append("t", [("k", b"new")])
        assert [r.value for r in await a.read("t", 0, 0, 10)] == [b"new"]
    assert [g.group for g in await a.groups()] == []  # no offsets left on a deleted id
