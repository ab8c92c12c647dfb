"""The transport conformance suite (tidings.testing) on every transport."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tidings.testing import FaultPlan, FaultyTransport, TransportConformance, drain
from tidings.transport import Transport, positions
from tidings.transports import open_transport


class TestMemoryTransport(TransportConformance):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex}"


class TestSQLiteTransport(TransportConformance):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        # A short lease keeps rebalancing tests quick (heartbeat every lease/3).
        return f"sqlite:///{tmp_path / 'events.db'}?lease=1"


class TestFaultyTransportWithoutFaults(TransportConformance):
    """The fault-injection wrapper, injecting nothing, is a transport like any other:
    what it delegates keeps every promise (tests/test_faults.py tests its faults)."""

    @pytest.fixture
    def url(self) -> str:
        return f"memory://conformance-faulty-{uuid.uuid4().hex}"

    def open(self, url: str) -> Transport:
        return FaultyTransport(open_transport(url), seed=0, plan=FaultPlan.none())


async def test_memory_retention_reports_what_a_group_never_read_and_can_keep_it() -> None:
    from tidings.transports.memory import MemoryTransport

    t = MemoryTransport("memory://")
    await t.start()
    await t.create_topic("t", 1, retention_bytes=50)
    await t.create_topic("kept", 1, retention_bytes=50, keep_unread=True)
    c = t.consumer("g", ["t", "kept"])
    await c.start()
    await c.commit(c.at({("t", 0): 2, ("kept", 0): 2}))
    for topic in ("t", "kept"):
        await t.append(topic, [("k", b"0123456789") for _ in range(10)])
    rows = {p.topic: p for g in await t.groups() for p in g.partitions}
    assert (rows["t"].start, rows["t"].lost) == (5, 3)  # 3 unread records went
    assert (rows["kept"].start, rows["kept"].lost) == (2, 0)  # kept from the group's offset
    await c.close()
    await t.close()


async def test_memory_members_let_a_deleted_topic_go_and_read_it_anew() -> None:
    from tidings.transports.memory import MemoryTransport

    t = MemoryTransport("memory://")
    await t.start()
    await t.create_topic("t", 2)
    await t.append("t", [(f"k{i}", f"v{i}".encode()) for i in range(6)])
    revoked: list[frozenset[tuple[str, int]]] = []

    async def on_revoke(tps: frozenset[tuple[str, int]]) -> None:
        revoked.append(tps)

    c = t.consumer("g", ["t"], on_revoke=on_revoke)
    await c.start()
    before = await drain(c, 6)
    await c.commit(positions(before[:2]))
    await t.delete_topic("t")  # forced, as it were: the member is live
    assert revoked == [frozenset({("t", 0), ("t", 1)})]  # let go first
    # Still subscribed: it reads the topic again, made anew, from its start.
    assert {p.topic: p.committed for g in await t.groups() for p in g.partitions} == {"t": 0}
    [(partition, offset)] = await t.append("t", [("k", b"new")])
    [record] = await drain(c, 1)
    assert (record.value, record.partition, record.offset) == (b"new", partition, offset)
    await c.commit(positions(before))  # fetched before the delete: refused (fencing)
    rows = {(p.topic, p.partition): p.committed for g in await t.groups() for p in g.partitions}
    assert rows == {("t", p): 0 for p in range(4)}  # made anew with the default count
    await c.close()
    await t.close()
