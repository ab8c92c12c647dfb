"""The transport conformance suite (tidings.testing) on every transport."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tidings.testing import FaultPlan, FaultyTransport, TransportConformance
from tidings.transport import Transport
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
